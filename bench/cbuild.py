#!/usr/bin/env python3
"""Incremental C builds (issue 21, docs/BENCHMARKS.md): examples/cbuild.json through `shoal run`
(namespace sandbox, every compile reading a selection of the sources) against `make -j2` on its
Makefile, both from a fresh copy: a full build, a rerun with no change and a rerun after one
`.c` file is edited, each the median of REPEAT (3) rounds run in turn. Needs the gcc image's root
filesystem (scripts/build-explorer-images.sh) and the host's gcc and make."""
import os, shutil, statistics, subprocess, sys, time
from pathlib import Path

from common import ROOT, print, work_dir

REPEAT = int(os.environ.get("REPEAT", "3"))
SHOAL = ROOT / "target/release/shoal"
GCC_ROOTFS = Path(os.environ.get("SHOAL_EXPLORER_ROOTFS", Path.home() / ".cache/shoal/explorer-rootfs")) / "gcc"


def run(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def copy(dest):
    shutil.copytree(ROOT / "examples/cbuild", dest / "cbuild")
    shutil.copy(ROOT / "examples/cbuild.json", dest / "cbuild.json")


def edit(src):
    f = src / "greet.c"
    f.write_text(f.read_text().replace("%s says hello", "%s, edited, says hello"))


def shoal_round(work):
    home = work / "home"
    env = dict(os.environ, SHOAL_HOME=str(home), RUST_LOG="warn")
    subprocess.run([SHOAL, "image", "build", GCC_ROOTFS, "--tag", "gcc:bookworm", "--env",
                    "PATH=/usr/local/bin:/usr/bin:/bin"], check=True, env=env, stdout=subprocess.DEVNULL)
    copy(work)
    cmd = [SHOAL, "run", work / "cbuild.json", "--backend", "namespace", "--json"]
    full = run(cmd, env=env)
    again = run(cmd, env=env)
    edit(work / "cbuild/src")
    one = run(cmd, env=env)
    return full, again, one


def make_round(work):
    copy(work)
    d = work / "cbuild"
    full = run(["make", "-j2"], cwd=d)
    again = run(["make", "-j2"], cwd=d)
    time.sleep(0.01)  # make compares mtimes
    edit(d / "src")
    one = run(["make", "-j2"], cwd=d)
    return full, again, one


def main():
    if not GCC_ROOTFS.joinpath("usr/bin/gcc").exists():
        sys.exit(f"{GCC_ROOTFS} is missing: run scripts/build-explorer-images.sh")
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shoal-node"], check=True, cwd=ROOT)
    ours, peer = [], []
    for i in range(REPEAT):
        ours.append(shoal_round(work_dir(f"cbuild-shoal-{i}-")))
        peer.append(make_round(work_dir(f"cbuild-make-{i}-")))
    print("| build | shoal run (s) | make -j2 (s) | ratio |")
    print("|---|---|---|---|")
    for k, what in enumerate(["full build", "no-change rerun", "one .c edited"]):
        a = statistics.median(r[k] for r in ours)
        b = statistics.median(r[k] for r in peer)
        print(f"| {what} | {a:.3f} | {b:.3f} | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
