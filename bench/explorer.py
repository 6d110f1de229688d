#!/usr/bin/env python3
"""Issue 6 figures: the Program Explorer on a real `shoal node`, its peer (`shoal run`) in the same run.

  page load          GET / and what it pulls (app.js, app.css, the catalogue) on one connection: bytes and time
  cached answer      POST /v1/explorer/runs of a request the action cache holds, end to end on loopback
                     (multipart upload, hashing the parts, cache lookup, the run view), one keep-alive connection
  cold run           a new job (a fresh script each time) through the page's API, against the same job (same
                     image, argv, env, inputs) through `shoal run DAG --json`; both in a microVM, no warm VM
                     (`--warm-vms 0` for both); the node's default warm pool is measured too

Usage: bench/explorer.py [--shoal target/release/shoal] [--repeat 5] [--cached 50] [--backend microvm]
Prints medians and ratios; paste the table into docs/BENCHMARKS.md.
"""
import argparse, http.client, json, os, statistics, subprocess, sys, time, uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, shoal_home_with_busybox, work_dir  # noqa: E402

SCRIPT = "echo cold {nonce}\nwc -c /input/script.sh\n"


def multipart(request, files):
    boundary = uuid.uuid4().hex
    out = bytearray()
    parts = [("request", None, json.dumps(request).encode())] + [("file", n, c) for n, c in files]
    for name, filename, content in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


class Node:
    """A `shoal node` on loopback with its own store; stopped by stop()."""

    def __init__(self, shoal, env, work, name, extra):
        self.ready = work / f"{name}.ready.json"
        self.log = open(work / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [shoal, "node", "--http", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--blobs", "127.0.0.1:0",
             "--ready-file", str(self.ready)] + extra, env=env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while not self.ready.exists():
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the node did not start; see {self.log.name}")
            time.sleep(0.05)
        addr = json.loads(self.ready.read_text())["http"].removeprefix("http://")
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def request(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, r.getheaders(), data

    def run(self, request, files):
        ct, body = multipart(request, files)
        t = time.perf_counter()
        status, _, data = self.request("POST", "/v1/explorer/runs", body, {"Content-Type": ct})
        elapsed = time.perf_counter() - t
        v = json.loads(data)
        if status != 200 or not v.get("ok"):
            raise SystemExit(f"explorer run failed ({status}): {v.get('error') or v.get('message')}")
        return elapsed, v

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def page_load(node, repeat):
    """Bytes (headers + bodies) and time of the first load, as a browser makes it (on one connection)."""
    times, total = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        total = 0
        for path in ["/", "/explorer/app.js", "/explorer/app.css", "/v1/explorer/catalogue"]:
            status, headers, data = node.request("GET", path)
            assert status == 200, path
            total += len(data) + sum(len(k) + len(v) + 4 for k, v in headers) + 17
        times.append(time.perf_counter() - t)
    return total, statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target" / "release" / "shoal"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cached", type=int, default=50)
    ap.add_argument("--backend", default="microvm", choices=["microvm", "namespace"])
    args = ap.parse_args()
    shoal = args.shoal
    work = work_dir("shoal-bench-explorer-")
    env, _ = shoal_home_with_busybox(shoal, work)
    sh([shoal, "mesh", "init", "--out", str(Path(env["SHOAL_HOME"]) / "mesh.key")], env=env,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request = {"entry": "sh", "options": {}, "main": "script.sh"}
    # `shoal run` needs a store of its own (the node holds its store's lock), with the same image.
    (work / "run").mkdir()
    run_env, _ = shoal_home_with_busybox(shoal, work / "run")

    node = Node(shoal, env, work, "node-warm0", ["--backend", args.backend, "--warm-vms", "0"])
    try:
        load_bytes, load_s = page_load(node, args.repeat)
        print(f"page load: {load_bytes} bytes, {load_s * 1000:.1f} ms")

        # The first run sets up the backend (kernel, initramfs, squashfs of the image): not measured.
        node.run(request, [("script.sh", SCRIPT.format(nonce="warm-up").encode())])
        cached_files = [("script.sh", SCRIPT.format(nonce="cached").encode())]
        _, v = node.run(request, cached_files)
        cached = []
        for _ in range(args.cached):
            t, v = node.run(request, cached_files)
            assert v["cached"], v
            cached.append(t)
        cached.sort()
        cached_med, cached_p90 = statistics.median(cached), cached[int(len(cached) * 0.9) - 1]
        print(f"cached answer: median {cached_med * 1000:.1f} ms, p90 {cached_p90 * 1000:.1f} ms "
              f"(server side {v['answer_ms']} ms)")

        # Cold runs, interleaved: the page's API, then `shoal run` of the same job with another nonce.
        explorer_cold, run_cold = [], []
        job_dir = work / "jobs"
        job_dir.mkdir()

        def shoal_run(i, job, req):
            script = job_dir / f"script-{i}.sh"
            script.write_text(SCRIPT.format(nonce=f"run-{i}"))
            dag = {"version": 1, "jobs": [{
                "id": "explore", "image": "busybox:latest", "command": job["command"], "env": job["env"],
                "workdir": job["workdir"], "inputs": {"script.sh": f"file:{script.name}"},
                "outputs": {"files": "dir:/output"},
                "requirements": {"cores": 1, "memory": f"{req['memory_bytes']}B", "timeout": f"{req['timeout_ms']}ms",
                                 "output_size": f"{req['output_bytes_max']}B", "scratch": f"{req['scratch_bytes']}B"},
            }]}
            dag_path = job_dir / f"dag-{i}.json"
            dag_path.write_text(json.dumps(dag))
            t = time.perf_counter()
            out = subprocess.run([shoal, "run", str(dag_path), "--json", "--backend", args.backend, "--warm-vms", "0"],
                                 env=run_env, capture_output=True, text=True)
            elapsed = time.perf_counter() - t
            if out.returncode != 0:
                raise SystemExit(f"shoal run failed:\n{out.stdout}\n{out.stderr}")
            assert not json.loads(out.stdout)["jobs"][0]["cached"]
            return elapsed

        # As for the node, the first `shoal run` in its store sets the backend up: not measured.
        shoal_run("warm-up", v["run_record"]["job"], v["run_record"]["requirements"])
        for i in range(args.repeat):
            t, v = node.run(request, [("script.sh", SCRIPT.format(nonce=f"explorer-{i}").encode())])
            assert not v["cached"]
            explorer_cold.append(t)
            run_cold.append(shoal_run(i, v["run_record"]["job"], v["run_record"]["requirements"]))
    finally:
        node.stop()

    # The node as `shoal node` starts by default: one VM kept booted per kind of job.
    node = Node(shoal, env, work, "node-warm1", ["--backend", args.backend])
    try:
        node.run(request, [("script.sh", SCRIPT.format(nonce="warm-up-pool").encode())])
        time.sleep(3)
        pooled = []
        for i in range(args.repeat):
            t, _ = node.run(request, [("script.sh", SCRIPT.format(nonce=f"pool-{i}").encode())])
            pooled.append(t)
            time.sleep(3)  # the pool boots the next VM between requests, as between a person's clicks
    finally:
        node.stop()

    e, r, p = statistics.median(explorer_cold), statistics.median(run_cold), statistics.median(pooled)
    print(f"\nbackend {args.backend}; medians of {args.repeat} (cached: of {args.cached})")
    print("| figure | shoal explorer | peer | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| page first load | {load_bytes / 1024:.1f} KiB, {load_s * 1000:.1f} ms | | | ≤ 200 KB |")
    print(f"| cached answer, end to end | {cached_med * 1000:.1f} ms (p90 {cached_p90 * 1000:.1f}) | | | ≤ 20 ms |")
    print(f"| cold run, no warm VM | {e:.3f} s | `shoal run`: {r:.3f} s | {e / r:.2f} | ≤ 1.1 × |")
    print(f"| cold run, node's warm pool | {p:.3f} s | `shoal run`: {r:.3f} s | {p / r:.2f} | |")
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
