#!/usr/bin/env python3
"""Committing a 1000-job run to git (issue 23, docs/BENCHMARKS.md). A DAG of JOBS (1000) small jobs
is run once to fill the cache; then the same run, answered from the cache, is timed without
`--provenance`, with `--provenance` into a fresh repository (the first commit: every file is new),
and with `--provenance` into a repository that already holds a run of the DAG (a commit of the next
run: the files exist). The differences are the time the commit adds, against the goal (<= 0.2 s).
The peer is git's own CLI doing the same by hand: the same files written into a fresh work tree (or
over the previous run's) and `git add -A && git commit`. Also printed: how long creating 1000 files of
that size takes in the work directory, which on a busy ext4 varies tenfold (its inode allocator) and
is most of a first commit. Median of REPEAT (5)."""
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
    first = median_of(lambda: timed_run(["--provenance", str(fresh_repo())]))
    last = work / f"repo{n[0]}"
    files = subprocess.run(["git", "-C", last, "ls-files"], check=True, capture_output=True, text=True).stdout.split()
    assert len([f for f in files if f.startswith("records/")]) == JOBS, len(files)
    again = median_of(lambda: timed_run(["--provenance", str(last)]))
    archive = work / "run.tar"
    subprocess.run(["git", "-C", last, "archive", "-o", archive, "HEAD"], check=True)
    git_env = {**os.environ, **GIT_ID}

    def git_cli(repo):
        t = time.perf_counter()
        subprocess.run(["tar", "-x", "-f", archive, "-C", repo], check=True)
        subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env=git_env)
        subprocess.run(["git", "-C", repo, "commit", "-q", "--allow-empty", "-m", "run"], check=True, env=git_env)
        return time.perf_counter() - t

    git_first = median_of(lambda: git_cli(fresh_repo()))
    by_hand = fresh_repo()
    git_cli(by_hand)
    git_again = median_of(lambda: git_cli(by_hand))

    def create_files():
        d = Path(work) / f"files{n[0]}"
        n[0] += 1
        d.mkdir()
        t = time.perf_counter()
        for i in range(JOBS):
            (d / f"j{i:04}.json").write_bytes(b"x" * 4700)
        return time.perf_counter() - t

    creating = median_of(create_files)
    print(f"| {JOBS}-job run, cached (shoal run: {plain:.3f} s) | shoal --provenance adds | git CLI by hand | shoal / git | goal |")
    print("|---|---|---|---|---|")
    for what, ours, peer in [("first commit, a fresh repository", first - plain, git_first),
                             ("next run's commit, over the previous run", again - plain, git_again)]:
        print(f"| {what} | {ours:.3f} s | {peer:.3f} s | {ours / peer:.2f} | <= 0.2 s: {'met' if ours <= 0.2 else 'not met'} |")
    print(f"creating {JOBS} files of 4.7 KB in the work directory ({work}) takes {creating:.3f} s here")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
