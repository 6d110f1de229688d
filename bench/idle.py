#!/usr/bin/env python3
"""Issue 19 figures: what an idle mesh costs as it grows, with real `shoal node` processes on 127.0.0.1.

For each size N: N nodes started one after another, every one joining the first (the way a user points
new machines at one seed); then
- formed: seconds from the first node's start until every node lists all N nodes with their
  capabilities in `/v1/peers` (what the scheduler needs to rank a peer);
- idle CPU per node: user+system time from /proc/PID/stat over an idle window, % of one core;
- RSS per node: /proc/PID/status VmRSS at the window's end;
- libp2p bytes sent per node per second over the window (`/v1/metrics`' counters below pnet).

Usage: bench/idle.py [--shoal target/release/shoal] [--sizes 4,16,32,48] [--idle-s 30]
"""
import argparse, json, os, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, start_node, work_dir  # noqa: E402

FORM_TIMEOUT_S = 300
CLK_TCK = os.sysconf("SC_CLK_TCK")


def get(http, path):
    with urllib.request.urlopen(http + path, timeout=30) as r:
        return json.loads(r.read())


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sent_bytes(http):
    return get(http, "/v1/metrics")["libp2p_bytes_out"]


def formed(nodes):
    for n in nodes:
        peers = get(n["http"], "/v1/peers")["peers"]
        if sum(1 for p in peers if p["caps"] is not None and (p["me"] or p["connected"])) < len(nodes):
            return False
    return True


def run_size(shoal, size, idle_s, key, work):
    nodes, procs = [], []
    start = time.time()
    try:
        for i in range(size):
            home = work / f"n{size}-{i}"
            home.mkdir(parents=True)
            log = open(home / "node.log", "ab")
            join = [nodes[0]["listen"]] if nodes else []
            proc, v = start_node(shoal, key, home / "ready.json", home / "home", log, join=join)
            procs.append(proc)
            nodes.append({"http": v["http"], "listen": v["listen"][0], "pid": proc.pid})
        started = time.time() - start
        while not formed(nodes):
            if time.time() - start > FORM_TIMEOUT_S:
                raise SystemExit(f"{size} nodes did not form within {FORM_TIMEOUT_S} s")
            time.sleep(0.25)
        form_s = time.time() - start
        time.sleep(5)  # let the joins' bursts (sync of the whole ledger, identify) pass
        t0, c0, b0 = time.time(), [cpu_ticks(n["pid"]) for n in nodes], [sent_bytes(n["http"]) for n in nodes]
        time.sleep(idle_s)
        t1, c1, b1 = time.time(), [cpu_ticks(n["pid"]) for n in nodes], [sent_bytes(n["http"]) for n in nodes]
        cpu = [100 * (b - a) / CLK_TCK / (t1 - t0) for a, b in zip(c0, c1)]
        rss = [rss_mib(n["pid"]) for n in nodes]
        sent = [(b - a) / (t1 - t0) / 1000 for a, b in zip(b0, b1)]
        return {"nodes": size, "started_s": round(started, 1), "formed_s": round(form_s, 1),
                "cpu_pct_median": round(statistics.median(cpu), 2), "cpu_pct_max": round(max(cpu), 2),
                "rss_mib_median": round(statistics.median(rss), 1), "rss_mib_max": round(max(rss), 1),
                "sent_kb_s_median": round(statistics.median(sent), 2)}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target/release/shoal"))
    ap.add_argument("--sizes", default="4,16,32,48")
    ap.add_argument("--idle-s", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = work_dir("shoal-idle-")
    key = work / "mesh.key"
    sh([a.shoal, "mesh", "init", "--out", str(key)], stdout=subprocess.DEVNULL)
    rows = [run_size(a.shoal, int(s), a.idle_s, key, work) for s in a.sizes.split(",")]
    if a.json:
        print(json.dumps(rows))
        return
    print("| nodes | all started (s) | formed (s) | idle CPU/node median (max) | RSS/node median (max) | sent/node |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['started_s']} | {r['formed_s']} | {r['cpu_pct_median']} % ({r['cpu_pct_max']} %)"
              f" | {r['rss_mib_median']} MiB ({r['rss_mib_max']} MiB) | {r['sent_kb_s_median']} KB/s |")


if __name__ == "__main__":
    main()
