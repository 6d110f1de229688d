#!/usr/bin/env python3
"""Issue 4 figures: a mesh of real `shoal node` processes on 127.0.0.1, measured in one run.

- claim latency: a DAG submitted on node A whose job only node B may run (a label), from the submit
  request leaving the client to B's Claim fact (its HLC wall time; one clock, one host);
- recovery: kill -9 of the node running a long job, to another node's claim of it (target: lease + 1 s);
- blob throughput node to node: shoal's BlobNode against raw iroh-blobs between the same kind of endpoints
  (crates/blobs/examples/blob_throughput.rs, release build);
- libp2p bytes per node per second, idle and while a 50-job DAG runs, counted on the wire (below pnet);
- CPU of an idle node (getrusage over the idle window).

Usage: bench/mesh.py [--shoal target/release/shoal] [--repeat 20] [--idle-s 30] [--no-blobs]
"""
import argparse, json, os, signal, statistics, subprocess, sys, threading, time, urllib.error, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, shoal_home_with_busybox, start_node, work_dir  # noqa: E402

LEASE_MS = 10_000


class Node:
    def __init__(self, shoal, home, key, name, join=(), labels=()):
        self.name, self.home = name, home
        home.mkdir(parents=True, exist_ok=True)
        extra = [a for l in labels for a in ("--label", l)]
        self.log = open(home / "node.log", "ab")
        self.proc, v = start_node(shoal, key, home / "ready.json", home / "home", self.log, join=join, extra=extra)
        self.id, self.http, self.listen = v["node"], v["http"], v["listen"][0]

    def get(self, path):
        with urllib.request.urlopen(self.http + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path, body):
        # The node takes JSON bodies only as JSON (urllib would say form-urlencoded: refused, 415).
        req = urllib.request.Request(self.http + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise SystemExit(f"POST {path} on {self.name}: {e.code} {e.read().decode()}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Events:
    """Follows a node's SSE stream; records (kind, dag, job, node, at_unix_ms)."""

    def __init__(self, node):
        self.items, self.cv = [], threading.Condition()
        threading.Thread(target=self._run, args=(node,), daemon=True).start()

    def _run(self, node):
        with urllib.request.urlopen(node.http + "/v1/events", timeout=3600) as r:
            for line in r:
                line = line.decode().strip()
                if line.startswith("data:"):
                    with self.cv:
                        self.items.append(json.loads(line[5:]))
                        self.cv.notify_all()

    def wait(self, pred, timeout):
        deadline = time.time() + timeout
        with self.cv:
            while True:
                for e in self.items:
                    if pred(e):
                        return e
                left = deadline - time.time()
                if left <= 0:
                    raise SystemExit("timed out waiting for an event")
                self.cv.wait(left)


def wait_mesh(nodes, timeout=30):
    deadline = time.time() + timeout
    want = {n.id for n in nodes}
    while time.time() < deadline:
        if all(want <= {p["node"] for p in n.get("/v1/peers")["peers"] if p["me"] or p["last_seen_ms_ago"] < 16000}
               for n in nodes):
            return
        time.sleep(0.1)
    raise SystemExit("the mesh did not form")


def dag(jobs):
    return json.dumps({"version": 1, "jobs": jobs}).encode()


def metrics(nodes):
    return {n.name: n.get("/v1/metrics") for n in nodes}


def traffic(before, after, seconds):
    """Per node: (bytes out per s, bytes in per s)."""
    return {k: ((after[k]["libp2p_bytes_out"] - before[k]["libp2p_bytes_out"]) / seconds,
                (after[k]["libp2p_bytes_in"] - before[k]["libp2p_bytes_in"]) / seconds) for k in before}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target" / "release" / "shoal"))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=30)
    ap.add_argument("--no-blobs", action="store_true")
    args = ap.parse_args()
    shoal = args.shoal
    if not Path(shoal).exists():
        shoal = str(ROOT / "target" / "debug" / "shoal")
        print(f"(no release build; using {shoal}: figures are slower than a release build's)")
    work = work_dir("shoal-bench-mesh-")
    key = work / "mesh.key"
    sh([shoal, "mesh", "init", "--out", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env, _ = shoal_home_with_busybox(shoal, work / "a")
    a = Node(shoal, work / "a", key, "A")
    nodes = [a] + [Node(shoal, work / n.lower(), key, n, join=[a.listen], labels=[f"name={n.lower()}"])
                   for n in ["B", "C", "D"]]
    try:
        wait_mesh(nodes)
        b = nodes[1]
        ev_b = Events(b)
        # Warm: B fetches the image once (not part of claim latency).
        r = a.post("/v1/dags", dag([{"id": "warm", "image": "busybox:latest", "command": ["true"],
                                     "requirements": {"labels": {"name": "b"}}}]))
        ev_b.wait(lambda e: e["kind"] == "done" and e["dag"] == r["dag"], 60)

        # Claim latency, A -> B.
        lat = []
        for i in range(args.repeat):
            body = dag([{"id": "j", "image": "busybox:latest", "command": ["echo", f"claim {i} {time.time()}"],
                         "requirements": {"labels": {"name": "b"}}}])
            t0 = time.time() * 1000
            r = a.post("/v1/dags", body)
            e = ev_b.wait(lambda e: e["kind"] == "claimed" and e["dag"] == r["dag"], 30)
            lat.append(e["at_unix_ms"] - t0)
        claim_ms = statistics.median(lat)
        print(f"claim latency (submit on A -> claim on B): median {claim_ms:.1f} ms, "
              f"min {min(lat):.1f}, max {max(lat):.1f} over {len(lat)} (target <= 50 ms)")

        # Idle traffic and CPU.
        time.sleep(3)
        m0, t0 = metrics(nodes), time.time()
        time.sleep(args.idle_s)
        m1, t1 = metrics(nodes), time.time()
        idle = traffic(m0, m1, t1 - t0)
        cpu = {k: ((m1[k]["cpu_user_ms"] + m1[k]["cpu_sys_ms"]) - (m0[k]["cpu_user_ms"] + m0[k]["cpu_sys_ms"]))
               / ((t1 - t0) * 1000) * 100 for k in m0}
        idle_out = statistics.median(v[0] for v in idle.values())
        print(f"idle ({args.idle_s:.0f} s, 4 nodes): libp2p bytes/s per node out "
              + ", ".join(f"{k} {v[0]:.0f}" for k, v in idle.items())
              + f" (median {idle_out:.0f} B/s; target <= 2048); CPU % of a core "
              + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + " (target <= 1 %)")

        # Busy traffic: a 50-job DAG.
        jobs = [{"id": f"g{i}", "image": "busybox:latest", "command": ["sh", "-c", f"seq 1 {(i + 1) * 100}"],
                 "outputs": {"o": "stdout"}} for i in range(10)]
        jobs += [{"id": f"u{k}", "image": "busybox:latest", "command": ["sh", "-c", "wc -l < /input/n"],
                  "inputs": {"n": f"jobs:g{k % 10}/o"}, "outputs": {"o": "stdout"}} for k in range(40)]
        m0, t0 = metrics(nodes), time.time()
        r = a.post("/v1/dags", dag(jobs))
        while True:
            st = a.get(f"/v1/dags/{r['dag']}")
            if all(j["state"] in ("done", "failed") for j in st["jobs"].values()):
                break
            time.sleep(0.05)
        t_dag = time.time() - t0
        time.sleep(1)
        m1, t1 = metrics(nodes), time.time()
        busy = traffic(m0, m1, t1 - t0)
        busy_out = statistics.median(v[0] for v in busy.values())
        print(f"busy (50-job DAG over 4 nodes, {t_dag:.2f} s): libp2p bytes/s per node out "
              + ", ".join(f"{k} {v[0]:.0f}" for k, v in busy.items()) + f" (median {busy_out:.0f} B/s)")

        # Recovery after kill -9.
        ev_a = Events(a)
        r = a.post("/v1/dags", dag([{"id": "long", "image": "busybox:latest", "command": ["sleep", "30"],
                                     "requirements": {"labels": {}}}]))
        ev_a.wait(lambda e: e["kind"] == "claimed" and e["dag"] == r["dag"], 30)
        time.sleep(1)
        # The winning claim (a racing claim may have lost: killing its node would change nothing).
        holder = a.get(f"/v1/dags/{r['dag']}")["jobs"]["long"]["node"]
        victim = next(n for n in nodes if n.id == holder)
        if victim is a:
            ev_a = Events(nodes[1])
        time.sleep(1)
        t_kill = time.time() * 1000
        victim.kill()
        second = ev_a.wait(lambda e: e["kind"] == "claimed" and e["dag"] == r["dag"] and e["node"] != victim.id
                             and e["at_unix_ms"] > t_kill, 60)
        recovery_ms = second["at_unix_ms"] - t_kill
        print(f"recovery after kill -9 of the runner: claimed again {recovery_ms:.0f} ms after the kill "
              f"(lease {LEASE_MS} ms; target <= {LEASE_MS + 1000} ms)")
    finally:
        for n in nodes:
            n.kill()

    if not args.no_blobs:
        out = subprocess.run(["cargo", "run", "-q", "--release", "-p", "shoal-blobs", "--example", "blob_throughput"],
                             cwd=ROOT, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("blob throughput")), out.stderr[-500:])
        print(line + " (target ratio >= 0.8)")


if __name__ == "__main__":
    main()
