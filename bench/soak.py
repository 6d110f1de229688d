#!/usr/bin/env python3
"""Issue 16's soak: 4 real `shoal node` processes on 127.0.0.1 (namespace backend) run small DAGs
submitted without pause for a set time, while a random node is killed -9 and restarted every few
minutes and a random stored blob has a byte flipped now and then. At the end (submits stopped, every
node up) it waits for the DAGs to finish and reports:

- jobs lost: jobs of acknowledged DAGs that did not end `done` (must be 0);
- outputs unreadable: outputs that could not be fetched through a node, or came back with other
  bytes than the job writes (must be 0); every output over HTTP, a sample with `shoal get --node`;
- each node's resident memory and open files, and their growth per hour (a least-squares slope over
  each process's samples after its first 2 minutes, weighted by how long each process lived);
- ledger agreement: every node's ledger digest (/v1/metrics) equal;
- panics in the nodes' logs.

Usage: bench/soak.py [--minutes 60] [--shoal target/debug/shoal] [--submit-every-s 2] [--kill-every-s 180]
                     [--corrupt-every-s 90] [--drain-minutes 15] [--seed N] [--json PATH]
"""
import argparse, json, os, random, signal, subprocess, sys, threading, time, urllib.error, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, shoal_home_with_busybox, start_node, work_dir  # noqa: E402

NODES = 4
SAMPLE_EVERY_S = 15
WARMUP_S = 120          # samples of a process's first minutes are left out of its growth
SUBMIT_TIMEOUT_S = 330  # a submit may wait up to --submit-replication-timeout-s (300 s) for holders
CLI_SAMPLE = 40         # outputs also fetched with `shoal get --node`


def http_json(url, body=None, timeout=60):
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def http_bytes(url, timeout=120):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Node:
    def __init__(self, shoal, work, key, name):
        self.shoal, self.key, self.name = shoal, key, name
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home = self.dir / "home"
        self.proc, self.http, self.listen, self.started = None, None, None, None
        self.lives = []  # (pid, started, [(t, rss_bytes, fds)])

    def start(self, join):
        log = open(self.dir / "node.log", "ab")
        log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        self.proc, v = start_node(self.shoal, self.key, self.dir / "ready.json", self.home, log, join=join,
                                  extra=["--speed", "1000"], rust_log=os.environ.get("SOAK_RUST_LOG", "warn"))
        self.id, self.http, self.listen = v["node"], v["http"], v["listen"][0]
        self.started = time.time()
        self.lives.append((self.proc.pid, self.started, []))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def sample(self):
        if not self.alive():
            return
        pid = self.proc.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) * 1024
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration, ValueError):
            return
        self.lives[-1][2].append((time.time(), rss, fds))


def slope_per_hour(points):
    """Least-squares slope of (t, v) points, per hour."""
    n = len(points)
    if n < 3:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return None if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 3600


def growth(node):
    """(rss bytes/h, fds/h, seconds of samples) over the node's processes, weighted by their samples' span."""
    rss_w = fds_w = span_total = 0.0
    for _, started, samples in node.lives:
        pts = [s for s in samples if s[0] - started >= WARMUP_S]
        if len(pts) < 3:
            continue
        span = pts[-1][0] - pts[0][0]
        r, f = slope_per_hour([(t, rss) for t, rss, _ in pts]), slope_per_hour([(t, fd) for t, _, fd in pts])
        if r is None or f is None:
            continue
        rss_w += r * span
        fds_w += f * span
        span_total += span
    if span_total == 0:
        return None, None, 0
    return rss_w / span_total, fds_w / span_total, span_total


def soak_dag(i, image):
    """A 4-job DAG whose outputs are known: (DAG JSON, {job: (output, expected bytes)}). `image` is a
    `blake3:` image id: tags are a node's own, and DAGs go to any node."""
    n = 1000 + (i * 37) % 1000
    lines = "".join(f"soak-{i}-{k}\n" for k in range(1, n + 1))
    jobs = [
        {"id": "gen", "image": image, "command": ["sh", "-c", f"seq 1 {n} | sed s/^/soak-{i}-/"],
         "outputs": {"o": "stdout"}},
        {"id": "count", "image": image, "command": ["sh", "-c", "wc -l < /input/g"],
         "inputs": {"g": "jobs:gen/o"}, "outputs": {"o": "stdout"}},
        {"id": "last", "image": image, "command": ["tail", "-n", "1", "/input/g"],
         "inputs": {"g": "jobs:gen/o"}, "outputs": {"o": "stdout"}},
        {"id": "join", "image": image, "command": ["sh", "-c", "cat /input/c /input/l"],
         "inputs": {"c": "jobs:count/o", "l": "jobs:last/o"}, "outputs": {"o": "stdout"}},
    ]
    expected = {"gen": lines, "count": f"{n}\n", "last": f"soak-{i}-{n}\n", "join": f"{n}\nsoak-{i}-{n}\n"}
    return json.dumps({"version": 1, "jobs": jobs}).encode(), {k: ("o", v.encode()) for k, v in expected.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--shoal", default=None)
    ap.add_argument("--submit-every-s", type=float, default=2)
    ap.add_argument("--kill-every-s", type=float, default=180)
    ap.add_argument("--corrupt-every-s", type=float, default=90)
    ap.add_argument("--drain-minutes", type=float, default=15)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    shoal = args.shoal or str(ROOT / "target" / "release" / "shoal")
    if not Path(shoal).exists():
        shoal = str(ROOT / "target" / "debug" / "shoal")
    work = work_dir("shoal-soak-")
    print(f"soak: {args.minutes} min, 4 nodes, seed {seed}, binary {shoal}, work dir {work}")
    key = work / "mesh.key"
    sh([shoal, "mesh", "init", "--out", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env, _ = shoal_home_with_busybox(shoal, work / "n0")
    images = json.loads(subprocess.run([shoal, "image", "ls", "--json"], env=env, check=True, capture_output=True,
                                       text=True).stdout)
    image = next(im["id"] for im in images if im["tag"] == "busybox:latest")
    print(f"image busybox:latest = {image}")
    nodes = [Node(shoal, work, key, f"n{k}") for k in range(NODES)]
    nodes[0].start([])
    for n in nodes[1:]:
        n.start([nodes[0].listen])

    lock = threading.Lock()
    submitted = {}      # dag -> (index, expected)
    refused = []        # (t, node, status, reason)
    events = []         # (t, what)
    stop = threading.Event()

    def live():
        with lock:
            return [n for n in nodes if n.alive() and n.http]

    def submitter():
        i = 0
        while not stop.is_set():
            t0 = time.time()
            body, expected = soak_dag(i, image)
            cands = live()
            if cands:
                n = rng.choice(cands)
                try:
                    status, r = http_json(f"{n.http}/v1/dags?name=soak-{i}.json", body, timeout=SUBMIT_TIMEOUT_S)
                    with lock:
                        submitted[r["dag"]] = (i, expected)
                except urllib.error.HTTPError as e:
                    refused.append((time.time(), n.name, e.code, e.read().decode(errors="replace")[:300]))
                except (OSError, ValueError) as e:
                    # The node died under the request (a kill): not acknowledged, not counted.
                    refused.append((time.time(), n.name, 0, str(e)[:300]))
                i += 1
            stop.wait(max(0.0, args.submit_every_s - (time.time() - t0)))

    def sampler():
        while not stop.is_set():
            for n in nodes:
                n.sample()
            stop.wait(SAMPLE_EVERY_S)

    threads = [threading.Thread(target=submitter, daemon=True), threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    kills = corruptions = 0
    started = time.time()
    end = started + args.minutes * 60
    next_kill = started + args.kill_every_s
    next_corrupt = started + args.corrupt_every_s
    while time.time() < end:
        now = time.time()
        if now >= next_kill:
            victim = rng.choice(nodes)
            with lock:
                victim.kill()
            events.append((now, f"kill -9 {victim.name}"))
            time.sleep(rng.uniform(2, 8))
            others = [n.listen for n in nodes if n is not victim and n.alive()]
            victim.start(others)
            kills += 1
            print(f"[{(time.time() - started) / 60:5.1f} min] killed and restarted {victim.name}; "
                  f"{len(submitted)} DAGs acknowledged, {len(refused)} refused")
            next_kill = now + args.kill_every_s * rng.uniform(0.6, 1.4)
        if now >= next_corrupt:
            n = rng.choice(nodes)
            files = sorted((n.home / "blobs" / "data").glob("*.data"))
            if files:
                f = rng.choice(files)
                try:
                    size = f.stat().st_size
                    if size > 0:
                        with open(f, "r+b") as fh:
                            off = rng.randrange(size)
                            fh.seek(off)
                            b = fh.read(1)
                            fh.seek(off)
                            fh.write(bytes([b[0] ^ 0x20]))
                        corruptions += 1
                        events.append((now, f"flip byte {off} of {n.name}:{f.name}"))
                except OSError:
                    pass
            next_corrupt = now + args.corrupt_every_s * rng.uniform(0.6, 1.4)
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=SUBMIT_TIMEOUT_S + 10)
    hours = (time.time() - started) / 3600
    print(f"submits stopped after {hours * 60:.1f} min: {len(submitted)} DAGs acknowledged "
          f"({4 * len(submitted)} jobs), {len(refused)} refused, {kills} kills, {corruptions} corruptions")

    # Drain: every acknowledged DAG done, as each node sees it.
    drain_end = time.time() + args.drain_minutes * 60
    states = {}
    while True:
        n = rng.choice(live())
        try:
            _, listing = http_json(f"{n.http}/v1/dags", timeout=120)
            states = {d["dag"]: d["states"] for d in listing["dags"]}
        except (OSError, ValueError):
            pass
        unfinished = [d for d in submitted if states.get(d, {}).get("done", 0) < 4
                      and not states.get(d, {}).get("failed")]
        if not unfinished or time.time() > drain_end:
            break
        time.sleep(5)
    lost = {d: states.get(d) for d in submitted if states.get(d, {}).get("done", 0) != 4}
    jobs_lost = sum(4 - (s or {}).get("done", 0) for s in lost.values())
    print(f"drained in {(time.time() - (drain_end - args.drain_minutes * 60)):.0f} s: "
          f"jobs lost {jobs_lost} ({len(lost)} DAGs not all done)")
    stuck_views = {}
    for d, s in list(lost.items())[:10]:
        print(f"  not done: {d} {s}")
        for n in live():
            try:
                stuck_views.setdefault(d, {})[n.name] = http_json(f"{n.http}/v1/dags/{d}")[1]
            except (OSError, ValueError) as e:
                stuck_views.setdefault(d, {})[n.name] = str(e)

    # Outputs: every one through a node's API, a sample with the CLI.
    unreadable, checked, cli_checked = [], 0, 0
    items = sorted(submitted.items(), key=lambda kv: kv[1][0])
    for dag, (i, expected) in items:
        if dag in lost:
            continue
        for job, (out, want) in expected.items():
            n = rng.choice(live())
            try:
                got = http_bytes(f"{n.http}/v1/dags/{dag}/jobs/{job}/outputs/{out}")
            except urllib.error.HTTPError as e:
                got = f"error: {e.code} {e.read()[:300]!r}".encode()
            except (OSError, ValueError) as e:
                got = f"error: {e}".encode()
            checked += 1
            if got != want:
                unreadable.append((dag, job, n.name, got[:120]))
    for dag, (i, expected) in rng.sample(items, min(CLI_SAMPLE, len(items))):
        if dag in lost:
            continue
        job = rng.choice(sorted(expected))
        out, want = expected[job]
        n = rng.choice(live())
        r = subprocess.run([shoal, "get", job, out, "--dag", dag, "--node", n.http], capture_output=True,
                           env=dict(os.environ, SHOAL_HOME=str(work / "cli-home")), timeout=300)
        cli_checked += 1
        if r.returncode != 0 or r.stdout != want:
            unreadable.append((dag, job, n.name, (r.stdout[:60] + r.stderr[-200:])))
    print(f"outputs: {checked} over HTTP and {cli_checked} with `shoal get --node`; unreadable or wrong "
          f"{len(unreadable)}")
    for u in unreadable[:10]:
        print(f"  unreadable: {u}")

    # Ledger agreement.
    digests, agree_end = {}, time.time() + 180
    while True:
        try:
            digests = {n.name: http_json(f"{n.http}/v1/metrics")[1] for n in nodes}
        except (OSError, ValueError):
            pass
        if len({m["ledger_digest"] for m in digests.values()}) == 1 or time.time() > agree_end:
            break
        time.sleep(2)
    agree = len({m["ledger_digest"] for m in digests.values()}) == 1
    print("ledger: " + ", ".join(f"{k} {m['facts']} facts {m['ledger_digest'][7:19]}" for k, m in digests.items())
          + f" -> {'agree' if agree else 'DISAGREE'}")

    for n in nodes:
        n.sample()
    rows = {}
    for n in nodes:
        samples = [s for _, _, ss in n.lives for s in ss]
        rss_h, fds_h, span = growth(n)
        last = n.lives[-1][2][-1] if n.lives[-1][2] else (0, 0, 0)
        rows[n.name] = {
            "restarts": len(n.lives) - 1,
            "rss_mib_last": last[1] / 2**20, "rss_mib_peak": max((s[1] for s in samples), default=0) / 2**20,
            "fds_last": last[2], "fds_peak": max((s[2] for s in samples), default=0),
            "rss_mib_per_hour": None if rss_h is None else rss_h / 2**20,
            "fds_per_hour": fds_h, "growth_measured_over_min": span / 60,
        }
        print(f"{n.name}: {len(n.lives) - 1} restarts; RSS last {rows[n.name]['rss_mib_last']:.0f} MiB, peak "
              f"{rows[n.name]['rss_mib_peak']:.0f} MiB, growth "
              + ("n/a" if rss_h is None else f"{rss_h / 2**20:+.1f} MiB/h") + f"; fds last {last[2]}, peak "
              f"{rows[n.name]['fds_peak']}, growth " + ("n/a" if fds_h is None else f"{fds_h:+.1f}/h")
              + f" (over {span / 60:.0f} min of samples)")
    panics = {}
    for n in nodes:
        n.stop()
        text = (n.dir / "node.log").read_text(errors="replace")
        panics[n.name] = text.count("panicked")
    print(f"panics in node logs: {panics}")
    report = {
        "seed": seed, "minutes": hours * 60, "dags": len(submitted), "jobs": 4 * len(submitted),
        "refused_submits": len(refused), "refusals": refused[:20], "kills": kills, "corruptions": corruptions,
        "jobs_lost": jobs_lost, "outputs_checked_http": checked, "outputs_checked_cli": cli_checked,
        "outputs_unreadable": len(unreadable), "ledger_agree": agree,
        "ledger": {k: {"facts": m["facts"], "digest": m["ledger_digest"]} for k, m in digests.items()},
        "nodes": rows, "panics": panics, "events": events, "work": str(work), "stuck": stuck_views,
        "node_ids": {n.name: n.id for n in nodes},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items()
                      if k not in ("events", "refusals", "nodes", "ledger", "stuck", "node_ids")}))
    ok = jobs_lost == 0 and not unreadable and agree and not any(panics.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
