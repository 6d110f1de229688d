#!/usr/bin/env python3
"""`shoal why` on a 10,000-file tree input (issue 23, docs/BENCHMARKS.md): a job reads a tree of
FILES (10,000) files in 100 directories; one file is edited and the job run again; then `shoal why`
names that file. Prints the median of REPEAT (5) `shoal why` calls, against the goal (<= 0.1 s),
and beside it `git diff --no-index --stat` of the two directories (git's own diff of the same
trees, the habit the issue names) and `diff -rq`."""
import os, shutil, statistics, subprocess, time
from pathlib import Path

from common import ROOT, print, shoal_home_with_busybox, work_dir

REPEAT = int(os.environ.get("REPEAT", "5"))
FILES = int(os.environ.get("FILES", "10000"))
SHOAL = Path(os.environ.get("SHOAL_BIN", ROOT / "target/release/shoal"))


def timed(cmd, env=None, ok=(0,)):
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        assert r.returncode in ok, (cmd, r.returncode)
    return statistics.median(times)


def main():
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shoal-node"], check=True, cwd=ROOT)
    work = work_dir("why-bench-")
    env, _ = shoal_home_with_busybox(SHOAL, work)
    src = work / "src"
    for i in range(FILES):
        d = src / f"d{i % 100:03}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05}.txt").write_text(f"file {i}\n")
    before = work / "before"
    shutil.copytree(src, before)
    dag = work / "w.json"
    dag.write_text('{"version": 1, "jobs": [{"id": "w", "image": "busybox:latest", "command": ["true"], '
                   '"inputs": {"src": "file:src"}, "outputs": {"o": "stdout"}}]}')
    run = [SHOAL, "run", "--backend", "namespace", dag]
    subprocess.run(run, check=True, env=env, stdout=subprocess.DEVNULL)
    edited = f"d{FILES // 2 % 100:03}/f{FILES // 2:05}.txt"
    (src / edited).write_text("edited\n")
    subprocess.run(run, check=True, env=env, stdout=subprocess.DEVNULL)
    out = subprocess.run([SHOAL, "why", "w"], check=True, env=env, capture_output=True, text=True).stdout
    assert f"~ {edited}" in out, out
    ours = timed([SHOAL, "why", "w"], env=env)
    git = timed(["git", "diff", "--no-index", "--stat", before, src], ok=(1,))
    diff = timed(["diff", "-rq", before, src], ok=(1,))
    print(f"| {FILES} files, one edited | shoal why | git diff --no-index --stat | diff -rq | goal |")
    print("|---|---|---|---|---|")
    print(f"| median of {REPEAT} | {ours:.3f} s | {git:.3f} s | {diff:.3f} s | <= 0.1 s: "
          f"{'met' if ours <= 0.1 else 'not met'} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
