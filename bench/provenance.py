#!/usr/bin/env python3
"""Committing a 1000-job run to git (issue 23, docs/BENCHMARKS.md). A DAG of JOBS (1000) small jobs
is run once to fill the cache; then the same run, answered from the cache, is timed with and
without `--provenance REPO` (a fresh repository each time), and the difference is the time the
commit adds, against the goal (<= 0.2 s). Beside it, the peer: git's own CLI committing the very
same files (`git add -A && git commit`, the tree shoal wrote, in a fresh repository). Median of
REPEAT (5)."""
import json, os, shutil, statistics, subprocess, time
from pathlib import Path

from common import ROOT, print, shoal_home_with_busybox, work_dir

REPEAT = int(os.environ.get("REPEAT", "5"))
JOBS = int(os.environ.get("JOBS", "1000"))
SHOAL = Path(os.environ.get("SHOAL_BIN", ROOT / "target/release/shoal"))
GIT_ID = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
          "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}


def median_of(make):
    """Median of REPEAT calls of `make()`, each returning the seconds it measured."""
    return statistics.median(make() for _ in range(REPEAT))


def main():
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shoal-node"], check=True, cwd=ROOT)
    work = work_dir("provenance-bench-")
    env, _ = shoal_home_with_busybox(SHOAL, work)
    env.update(GIT_ID)
    jobs = [{"id": f"j{i:04}", "image": "busybox:latest", "command": ["echo", str(i)], "outputs": {"o": "stdout"}}
            for i in range(JOBS)]
    for i in range(1, JOBS):
        jobs[i]["inputs"] = {"prev": f"jobs:j{i - 1:04}/o"} if i % 10 else {}
    dag = work / "big.json"
    dag.write_text(json.dumps({"version": 1, "jobs": jobs}, indent=1))
    run = [SHOAL, "run", "--backend", "namespace", dag]
    subprocess.run(run, check=True, env=env, stdout=subprocess.DEVNULL)
    n = [0]

    def timed_run(extra):
        t = time.perf_counter()
        subprocess.run(run[:-1] + extra + [dag], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    def fresh_repo():
        n[0] += 1
        repo = work / f"repo{n[0]}"
        subprocess.run(["git", "init", "-q", repo], check=True)
        return repo

    plain = median_of(lambda: timed_run([]))
    committed = median_of(lambda: timed_run(["--provenance", str(fresh_repo())]))
    last = work / f"repo{n[0]}"
    files = subprocess.run(["git", "-C", last, "ls-files"], check=True, capture_output=True, text=True).stdout.split()
    assert len([f for f in files if f.startswith("records/")]) == JOBS, len(files)

    def git_cli():
        repo = fresh_repo()
        subprocess.run(f"git -C {last} archive HEAD | tar -x -C {repo}", shell=True, check=True)
        t = time.perf_counter()
        subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env={**os.environ, **GIT_ID})
        subprocess.run(["git", "-C", repo, "commit", "-qm", "run"], check=True, env={**os.environ, **GIT_ID})
        return time.perf_counter() - t

    git = median_of(git_cli)
    added = committed - plain
    print(f"| {JOBS}-job run, cached | shoal run | with --provenance | added | git add + commit of the same files | added / git | goal |")
    print("|---|---|---|---|---|---|---|")
    print(f"| median of {REPEAT} | {plain:.3f} s | {committed:.3f} s | {added:.3f} s | {git:.3f} s | {added / git:.2f} | "
          f"<= 0.2 s: {'met' if added <= 0.2 else 'not met'} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
