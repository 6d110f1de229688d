#!/usr/bin/env python3
"""Issue 20 figures: a bounded ledger. Two real `shoal node`s on 127.0.0.1 run DAGs of 20 jobs (one job
new per DAG, 19 answered by the action cache, so the ledger gets every fact a 20-job DAG makes: a
claim and a completion per job, the submit, `Alive`s), and after 10 and after 1,000 DAGs, once
the ended DAGs are past the retention, the bench measures on the first node:
- ledger bytes: the facts and the compacted index as stored (`/v1/metrics` `ledger_bytes`), and facts held;
- start time: from `shoal node` started on that store to its ready file;
- anti-entropy at idle: libp2p bytes sent per second over an idle window.
The same with compaction off (a retention of a year) is the peer: what the ledger grows to without it.
The issue's bound compares the compacted ledger after 1,000 DAGs with the ledger after 10 DAGs.

Usage: bench/ledger.py [--shoal target/debug/shoal] [--dags 10,1000] [--retention-s 5] [--idle-s 20] [--no-peer]
"""
import argparse, json, subprocess, sys, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, shoal_home_with_busybox, start_node, work_dir  # noqa: E402

JOBS = 20
RUN_TIMEOUT_S = 1800
YEAR_S = 365 * 86_400


def get(http, path):
    with urllib.request.urlopen(http + path, timeout=60) as r:
        return json.loads(r.read())


def post(http, path, body):
    req = urllib.request.Request(http + path, data=body.encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def dag_text(k):
    jobs = [{"id": f"j{i}", "image": "busybox:latest", "command": ["echo", f"job {i}"],
             "outputs": {"o": "stdout"}} for i in range(JOBS - 1)]
    jobs.append({"id": "new", "image": "busybox:latest", "command": ["echo", f"dag {k}"], "outputs": {"o": "stdout"}})
    return json.dumps({"version": 1, "jobs": jobs})


def all_done(http, dags):
    listed = {d["dag"]: d for d in get(http, "/v1/dags")["dags"]}
    for d in dags:
        row = listed.get(d)
        if row is not None and row["states"].get("done", 0) != row["jobs"]:
            return False
    return True


def measure(shoal, key, n0, n1, idle_s):
    m = get(n0["http"], "/v1/metrics")
    m1 = get(n1["http"], "/v1/metrics")
    t0, b0 = time.time(), m["libp2p_bytes_out"]
    time.sleep(idle_s)
    b1 = get(n0["http"], "/v1/metrics")["libp2p_bytes_out"]
    idle = (b1 - b0) / (time.time() - t0)
    # Restart the first node on its store: the time to its ready file.
    n0["proc"].terminate()
    n0["proc"].wait(timeout=60)
    started = time.time()
    proc, v = start_node(shoal, key, n0["home"] / "ready.json", n0["home"] / "home", n0["log"],
                         join=[n1["listen"]], extra=n0["extra"])
    start_s = time.time() - started
    n0.update(proc=proc, http=v["http"], listen=v["listen"][0])
    return {"ledger_bytes": m["ledger_bytes"], "facts": m["facts"], "compacted": m["compacted_dags"],
            "peer_facts": m1["facts"], "peer_compacted": m1["compacted_dags"],
            "same_digest": m["ledger_digest"] == m1["ledger_digest"],
            "start_s": round(start_s, 2), "idle_bytes_per_s": round(idle)}


def run(shoal, counts, retention_s, idle_s):
    work = work_dir("shoal-bench-ledger-")
    key = work / "mesh.key"
    subprocess.run([shoal, "mesh", "init", "--out", str(key)], check=True, capture_output=True)
    extra = ["--ledger-retention-s", str(retention_s), "--speed", "1000"]
    nodes = []
    for i in range(2):
        home = work / f"n{i}"
        home.mkdir()
        if i == 0:
            shoal_home_with_busybox(shoal, home)
        log = open(home / "node.log", "ab")
        join = [nodes[0]["listen"]] if nodes else []
        proc, v = start_node(shoal, key, home / "ready.json", home / "home", log, join=join, extra=extra)
        nodes.append({"proc": proc, "http": v["http"], "listen": v["listen"][0], "home": home, "log": log,
                      "extra": extra})
    n0, n1 = nodes
    rows, submitted, k = [], [], 0
    try:
        for target in counts:
            t = time.time()
            while k < target:
                submitted.append(post(n0["http"], "/v1/dags?name=d.json", dag_text(k))["dag"])
                k += 1
            while not all_done(n0["http"], submitted):
                if time.time() - t > RUN_TIMEOUT_S:
                    raise SystemExit(f"the {target} DAGs were not all done within {RUN_TIMEOUT_S} s")
                time.sleep(1)
            ran_s = time.time() - t
            # Past the retention, and until both nodes compacted every DAG.
            done_at = time.time()
            if retention_s < YEAR_S:
                while any(get(n["http"], "/v1/metrics")["compacted_dags"] < target for n in nodes):
                    if time.time() - done_at > 10 * retention_s + 60:
                        for n in nodes:
                            m = get(n["http"], "/v1/metrics")
                            print(json.dumps({k: m[k] for k in ["facts", "compacted_dags", "ledger_digest"]}))
                            print(json.dumps(get(n["http"], "/v1/dags"))[:1500])
                        raise SystemExit(f"not every DAG was compacted {time.time() - done_at:.0f} s after the last ended")
                    time.sleep(0.5)
            compacted_s = time.time() - done_at
            row = measure(shoal, key, n0, n1, idle_s)
            row["compacted_after_s"] = round(compacted_s, 1)
            row.update(dags=target, retention_s=retention_s, ran_s=round(ran_s, 1))
            rows.append(row)
            print(json.dumps(row))
    finally:
        for n in nodes:
            n["proc"].kill()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target/debug/shoal"))
    ap.add_argument("--dags", default="10,1000")
    ap.add_argument("--retention-s", type=int, default=5)
    ap.add_argument("--idle-s", type=int, default=20)
    ap.add_argument("--no-peer", action="store_true", help="skip the run with compaction off")
    a = ap.parse_args()
    counts = [int(c) for c in a.dags.split(",")]
    rows = run(a.shoal, counts, a.retention_s, a.idle_s)
    if not a.no_peer:
        rows += run(a.shoal, counts, YEAR_S, a.idle_s)
    print("| DAGs of 20 jobs | retention | ledger bytes | facts | compacted | start (s) | idle sent (B/s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ret = "off" if r["retention_s"] >= YEAR_S else f'{r["retention_s"]} s'
        print(f'| {r["dags"]} | {ret} | {r["ledger_bytes"]} | {r["facts"]} | {r["compacted"]} | {r["start_s"]} '
              f'| {r["idle_bytes_per_s"]} |')
    small, big = rows[0], rows[len(counts) - 1]
    print(f'ratios {big["dags"]} / {small["dags"]} DAGs with compaction: ledger bytes '
          f'{big["ledger_bytes"] / max(1, small["ledger_bytes"]):.2f}, start {big["start_s"] / max(0.01, small["start_s"]):.2f}, '
          f'idle bytes {big["idle_bytes_per_s"] / max(1, small["idle_bytes_per_s"]):.2f}')
    if not a.no_peer:
        off_small, off = rows[len(counts)], rows[-1]
        print(f'without compaction: {off["dags"]} / {off_small["dags"]} DAGs: ledger bytes '
              f'{off["ledger_bytes"] / max(1, off_small["ledger_bytes"]):.2f}, start {off["start_s"] / max(0.01, off_small["start_s"]):.2f}, '
              f'idle bytes {off["idle_bytes_per_s"] / max(1, off_small["idle_bytes_per_s"]):.2f}')
        print(f'at {off["dags"]} DAGs, compacted / not: ledger bytes {big["ledger_bytes"] / max(1, off["ledger_bytes"]):.4f}, '
              f'start {big["start_s"] / max(0.01, off["start_s"]):.2f}; {big["dags"]} compacted / {off_small["dags"]} not: '
              f'ledger bytes {big["ledger_bytes"] / max(1, off_small["ledger_bytes"]):.2f}, '
              f'start {big["start_s"] / max(0.01, off_small["start_s"]):.2f}')


if __name__ == "__main__":
    main()
