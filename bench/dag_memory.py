#!/usr/bin/env python3
"""Issue 16 item 9: memory per job in a big DAG (goal: at most 8 KB a job).

DAGs of N trivial jobs (`echo` on busybox:latest, namespace backend): a quarter of them start a
group, the next two each read the one before (chains), the fourth reads all three (fan-in), so
three quarters of the jobs wait on others. For each N it measures the peak RSS (the kernel's
maxrss of the process, from wait4) of

- parse:  `shoal run` of the DAG with one invalid job appended (parsed and validated, nothing runs);
- cold:   `shoal run --backend namespace` in a fresh store (every job runs);
- cached: the same run again (every job answered from the action cache);

and, with --node, the RSS growth of a `shoal node` (alone, namespace backend) that holds a
submitted DAG whose jobs need a label it lacks (so it keeps the DAG in its ledger and scheduler
and runs nothing): VmRSS after the submit less VmRSS before it, and again after a status
request for the DAG (`GET /v1/dags/ID`, whose answer names every job).

Bytes per job = (RSS(N2) - RSS(N1)) / (N2 - N1) between the smallest and largest N (the fixed
cost of the binary, the runtime and the store cancels out).

Usage: bench/dag_memory.py [--shoal target/release/shoal] [--sizes 1000,5000,20000] [--no-cold] [--node]
Paste the table into docs/BENCHMARKS.md ("Memory per job in a big DAG").
"""
import argparse, json, os, subprocess, sys, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, shoal_home_with_busybox, start_node, work_dir  # noqa: E402

GOAL_BYTES_PER_JOB = 8 * 1000


def dag_jobs(n, labels=None):
    """n trivial jobs: groups of four, an independent job, a chain of two after it, a fan-in of all three."""
    jobs = []
    for i in range(n):
        job = {"id": f"j{i}", "image": "busybox:latest", "command": ["echo", str(i)], "outputs": {"out": "stdout"}}
        k = i % 4
        if k in (1, 2):
            job["inputs"] = {"prev": f"jobs:j{i - 1}/out"}
        elif k == 3:
            job["inputs"] = {f"in{j}": f"jobs:j{i - j}/out" for j in (1, 2, 3)}
        if labels:
            job["requirements"] = {"labels": labels}
        jobs.append(job)
    return jobs


def write_dag(path, jobs):
    path.write_text(json.dumps({"version": 1, "jobs": jobs}))
    return path


def peak_rss(cmd, env, ok_codes=(0,)):
    """Runs `cmd` to its end; returns its peak RSS in bytes (ru_maxrss of wait4: the process and its
    waited-for children, the largest of them) and its wall time in seconds."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Drain stderr in the background would need a thread; the runs here write little to it.
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    if p.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{err[-2000:]}")
    return ru.ru_maxrss * 1024, time.perf_counter() - t


def proc_status(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Node:
    """A lone `shoal node` on loopback (no peers: a submit is acknowledged at once)."""

    def __init__(self, shoal, home, key):
        self.log = open(home / "node.log", "ab")
        self.proc, v = start_node(shoal, key, home / "ready.json", home / "home", self.log, extra=["--speed", "1000"])
        self.http = v["http"]

    def request(self, method, path, body=None):
        req = urllib.request.Request(self.http + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def node_growth(shoal, work, key, n):
    """RSS of a lone node before and after it takes a DAG of n jobs it cannot run (a label it lacks)."""
    home = work / f"node-{n}"
    home.mkdir()
    shoal_home_with_busybox(shoal, home)
    node = Node(shoal, home, key)
    try:
        time.sleep(2)  # let start-up settle (the speed probe, first gossip)
        before = proc_status(node.proc.pid, "VmRSS")
        body = json.dumps({"version": 1, "jobs": dag_jobs(n, labels={"bench": "nowhere"})}).encode()
        dag = node.request("POST", "/v1/dags", body)["dag"]
        time.sleep(2)  # a tick or two of the scheduler over the held DAG
        held = proc_status(node.proc.pid, "VmRSS")
        jobs = node.request("GET", f"/v1/dags/{dag}")["jobs"]
        assert len(jobs) == n, f"the node reports {len(jobs)} jobs of {n}"
        after_status = proc_status(node.proc.pid, "VmRSS")
        return held - before, after_status - before, proc_status(node.proc.pid, "VmHWM")
    finally:
        node.stop()


def per_job(figures, sizes):
    lo, hi = sizes[0], sizes[-1]
    return (figures[hi] - figures[lo]) / (hi - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target" / "release" / "shoal"))
    ap.add_argument("--sizes", default="1000,5000,20000", help="comma-separated job counts, at least two")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold runs (the slow part)")
    ap.add_argument("--node", action="store_true", help="also measure a node holding a submitted DAG")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 2:
        raise SystemExit("--sizes needs at least two job counts")
    shoal = args.shoal
    if not Path(shoal).exists():
        shoal = str(ROOT / "target" / "debug" / "shoal")
        print(f"(no release build; using {shoal})")
    work = work_dir("shoal-bench-mem-")
    rows = {}  # kind -> {n: bytes}
    for n in sizes:
        home = work / f"run-{n}"
        env, _ = shoal_home_with_busybox(shoal, home)
        jobs = dag_jobs(n)
        bad = write_dag(home / "bad.json", jobs + [{"id": "bad", "image": "busybox:latest", "comand": ["x"]}])
        rss, s = peak_rss([shoal, "run", str(bad), "--backend", "namespace"], env, ok_codes=(1, 2))
        rows.setdefault("parse", {})[n] = rss
        print(f"{n:>6} jobs  parse   {rss / 2**20:8.1f} MiB  {s:7.2f} s")
        if not args.no_cold:
            dag = write_dag(home / "dag.json", jobs)
            run = [shoal, "run", str(dag), "--backend", "namespace", "--json"]
            for kind in ("cold", "cached"):
                rss, s = peak_rss(run, env)
                rows.setdefault(kind, {})[n] = rss
                print(f"{n:>6} jobs  {kind:<7} {rss / 2**20:8.1f} MiB  {s:7.2f} s")
        subprocess.run(["rm", "-rf", str(home)])
    if args.node:
        key = work / "mesh.key"
        sh([shoal, "mesh", "init", "--out", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in sizes:
            held, status, hwm = node_growth(shoal, work, key, n)
            rows.setdefault("node, DAG held", {})[n] = held
            rows.setdefault("node, after GET /v1/dags/ID", {})[n] = status
            print(f"{n:>6} jobs  node    +{held / 2**20:7.1f} MiB held, +{status / 2**20:.1f} MiB after a status "
                  f"request (VmHWM {hwm / 2**20:.1f} MiB)")

    print()
    print(f"| measured | {' | '.join(f'N = {n}' for n in sizes)} | bytes per job | × the 8 KB goal |")
    print(f"|---|{'---|' * len(sizes)}---|---|")
    for kind, figs in rows.items():
        b = per_job(figs, sizes)
        cells = " | ".join(f"{figs[n] / 2**20:.1f} MiB" for n in sizes)
        print(f"| {kind} | {cells} | {b:,.0f} | {b / GOAL_BYTES_PER_JOB:.2f} |")
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
