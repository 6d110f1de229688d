#!/usr/bin/env python3
"""Issue 2 figures, measured against the named peers in one run.

(a) a fully cached 1000-job DAG through `shoal run` vs Snakemake's no-op run of the same DAG;
(b) 200 trivial jobs through `shoal run --no-cache` vs GNU make running the same 200 commands, each in an
    `unshare` sandbox (user, mount, pid, ipc, uts, net namespaces + chroot into the same busybox rootfs).

Usage: bench/pipeline.py [--shoal target/release/shoal] [--repeat 5]
Each shoal run alternates with its peer's (the machine's speed drifts by tens of percent within a
minute); prints medians, the ratio of the medians, the median of the adjacent pairs' ratios and the
fastest-to-fastest ratio. Paste the table into docs/BENCHMARKS.md.
"""
import argparse, json, os, subprocess, sys, time, venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print, sh, timed_alternating, shoal_home_with_busybox, work_dir  # noqa: E402


def snakemake_bin(work):
    env_dir = ROOT / "bench" / ".venv"
    exe = env_dir / "bin" / "snakemake"
    if not exe.exists():
        venv.create(env_dir, with_pip=True)
        sh([str(env_dir / "bin" / "pip"), "install", "-q", "snakemake"])
    return str(exe)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target" / "release" / "shoal"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--trivial", type=int, default=200)
    args = ap.parse_args()
    shoal = args.shoal
    cores = os.cpu_count() or 1
    work = work_dir("shoal-bench-")
    env, rootfs = shoal_home_with_busybox(shoal, work)

    # (a) 1000 jobs: job i depends on job (i-1)//2, a binary tree, each writes one line.
    n = args.jobs
    jobs = []
    for i in range(n):
        job = {"id": f"j{i}", "image": "busybox:latest", "command": ["echo", str(i)], "outputs": {"out": "stdout"}}
        if i > 0:
            job["inputs"] = {"parent": f"jobs:j{(i - 1) // 2}/out"}
        jobs.append(job)
    dag = work / "dag1000.json"
    dag.write_text(json.dumps({"version": 1, "jobs": jobs}))
    print(f"(a) first run of the {n}-job DAG (fills the cache)...")
    t = time.perf_counter()
    sh([shoal, "run", str(dag), "--json", "--backend", "namespace"], env=env, stdout=subprocess.DEVNULL)
    cold_1000 = time.perf_counter() - t
    print(f"    {cold_1000:.2f} s")

    smk_dir = work / "smk"
    smk_dir.mkdir()
    (smk_dir / "Snakefile").write_text(f"""
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))
rule job:
    input: lambda w: [] if int(w.i) == 0 else [f"out/{{(int(w.i) - 1) // 2}}.txt"]
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
""")
    smk = snakemake_bin(work)
    print("    snakemake: first run (creates the outputs)...")
    sh([smk, "--cores", str(cores), "--quiet"], cwd=smk_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("    cached shoal runs alternating with snakemake no-op runs...")
    cached = timed_alternating([shoal, "run", str(dag), "--json", "--backend", "namespace"],
                               [smk, "--cores", str(cores), "--quiet"], args.repeat,
                               ours_kw={"env": env}, peer_kw={"cwd": smk_dir})
    print(f"    shoal cached {cached[0]:.3f} s, snakemake no-op {cached[1]:.3f} s")

    # (b) 200 trivial jobs, no dependencies, run for real (no cache).
    m = args.trivial
    trivial = [{"id": f"t{i}", "image": "busybox:latest", "command": ["echo", str(i)], "outputs": {"out": "stdout"},
                "requirements": {"cores": 1}} for i in range(m)]
    dag200 = work / "dag200.json"
    dag200.write_text(json.dumps({"version": 1, "jobs": trivial}))

    mk = work / "Makefile"
    targets = " ".join(f"t{i}" for i in range(m))
    rules = "".join(
        f"t{i}:\n\t@unshare -Urmpfiun --mount-proc={rootfs}/proc chroot {rootfs} /bin/echo {i} > {work}/make-out/t{i}\n"
        for i in range(m))
    mk.write_text(f".PHONY: all {targets}\nall: {targets}\n{rules}")
    (work / "make-out").mkdir()
    print(f"(b) {m} trivial jobs: shoal runs alternating with make runs...")
    trivial = timed_alternating([shoal, "run", str(dag200), "--json", "--no-cache", "--backend", "namespace"],
                                ["make", "-s", "-j", str(cores), "-f", str(mk)], args.repeat, ours_kw={"env": env})

    rows = [
        ("fully cached 1000-job DAG", "shoal run", "snakemake no-op", cached),
        (f"{m} trivial jobs, sandboxed", "shoal run --no-cache", f"make -j{cores} + unshare", trivial),
    ]
    print(f"cold 1000-job run (for reference): {cold_1000:.2f} s; medians of {args.repeat} alternating runs below")
    print("| workload | shoal | s | peer | s | ratio of medians | median of pairs | fastest to fastest |")
    print("|---|---|---|---|---|---|---|---|")
    for name, a, b, (ta, tb, pairs, fastest) in rows:
        print(f"| {name} | {a} | {ta:.3f} | {b} | {tb:.3f} | {ta / tb:.2f} | {pairs:.2f} | {fastest:.2f} |")
    print(f"per-job: shoal {trivial[0] / m * 1000:.1f} ms, make+unshare {trivial[1] / m * 1000:.1f} ms")
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
