#!/usr/bin/env python3
"""Issue 3 figures: one trivial job (`echo hi`, stdout as its output) end to end, measured against the
issue's peers in one run, with the microVM's boot timeline.

  shoal run (microvm)      `shoal run --no-cache` of a one-job DAG, default backend
  (a) bare QEMU boot       the same QEMU command line and kernel, an initramfs whose init powers off at once
  (c) namespace backend    `shoal run --no-cache --backend namespace`, the same DAG
  (d) podman               `podman run --rm --network=none` of the same busybox rootfs (imported)
  (e) bare exec            /bin/echo hi
  warm pool               the same job handed to a VM booted ahead of demand (`--warm-vms 1`)
  (b) busybox + crun      the same kernel and rootfs squashfs, an initramfs of busybox, Debian's crun and the
                          modules, whose shell script mounts the root and runs the job with `crun run`

Usage: bench/microvm.py [--shoal target/release/shoal] [--repeat 7]
"""
import argparse, json, re, shlex, shutil, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, need_packages, print, sh, timed, shoal_home_with_busybox, work_dir  # noqa: E402

POWEROFF_C = r"""
#include <sys/reboot.h>
#include <unistd.h>
int main(void) { sync(); reboot(RB_POWER_OFF); return 0; }
"""


def qemu_argv_of_a_run(shoal, dag, env):
    """The exact QEMU command line shoal uses, from its debug log."""
    out = subprocess.run([shoal, "run", str(dag), "--no-cache", "--json", "--warm-vms", "0"], env=dict(env, RUST_LOG="shoal_vm=debug"),
                         capture_output=True, text=True, check=True)
    line = next(l for l in out.stderr.splitlines() if "starting QEMU" in l)
    cmd = re.sub(r"\x1b\[[0-9;]*m", "", line).split("cmd=", 1)[1]
    # Fields tracing prints after the command line (e.g. `warm=false`) are not QEMU's.
    cmd = re.sub(r"( [a-z_]+=(true|false|[0-9]+))+$", "", cmd)
    argv = shlex.split(cmd)
    if argv[:2] == ["env", "-i"]:
        argv = argv[2:]
    return argv


def bare_boot_argv(argv, initramfs):
    """shoal's QEMU argv with our initramfs and no disks; `quiet` as in a normal run."""
    out, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if a in ("-drive", "-device"):
            skip = 1
            continue
        if a == "-initrd":
            out += [a, str(initramfs)]
            skip = 1
            continue
        out.append(a.replace("shoal.debug", "quiet"))
    return out


def poweroff_initramfs(work):
    d = work / "poweroff"
    d.mkdir()
    (d / "init.c").write_text(POWEROFF_C)
    sh(["gcc", "-static", "-O2", "-o", str(d / "init"), str(d / "init.c")])
    cpio = work / "poweroff.cpio"
    with open(cpio, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", cwd=d, stdout=f, check=True)
    return cpio


CRUN_INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc none /proc
$B mount -t sysfs none /sys
$B mount -t devtmpfs none /dev
$B mount -t cgroup2 none /sys/fs/cgroup
for m in virtio_ring virtio virtio_mmio virtio_blk squashfs overlay; do $B insmod /m/$m.ko; done
while [ ! -b /dev/vda ]; do $B usleep 1000; done
# The image read-only under a tmpfs, as shoal's sandbox has it (the runtime needs mountpoints in it).
$B mkdir -p /mnt/lower /mnt/t /mnt/bundle/rootfs
$B mount -t squashfs -o ro /dev/vda /mnt/lower
$B mount -t tmpfs none /mnt/t
$B mkdir /mnt/t/u /mnt/t/w
$B mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/bundle/rootfs
$B cp /config.json /mnt/bundle/config.json
/bin/crun run --no-pivot --bundle /mnt/bundle job
$B poweroff -f
"""


def crun_initramfs(work, modules_dir):
    """(b): busybox + Debian's crun (and the libraries it links) + the six modules, as the seeds did it."""
    d = work / "crun-initramfs"
    for sub in ["bin", "m", "proc", "sys", "dev", "tmp", "mnt"]:
        (d / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", d / "bin" / "busybox")
    shutil.copy("/usr/bin/crun", d / "bin" / "crun")
    libs = subprocess.run(["ldd", "/usr/bin/crun"], capture_output=True, text=True, check=True).stdout
    for path in re.findall(r"(/\S+\.so[.\d]*)", libs):
        dest = d / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    for m in ["drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_mmio",
              "drivers/block/virtio_blk", "fs/squashfs/squashfs", "fs/overlayfs/overlay"]:
        shutil.copy(modules_dir / "kernel" / f"{m}.ko", d / "m" / (m.rsplit("/", 1)[1] + ".ko"))
    (d / "init").write_text(CRUN_INIT)
    (d / "init").chmod(0o755)
    spec_dir = work / "crun-spec"
    spec_dir.mkdir()
    sh(["crun", "spec"], cwd=spec_dir)
    spec = json.loads((spec_dir / "config.json").read_text())
    spec["process"]["args"] = ["/bin/echo", "hi"]
    spec["process"]["terminal"] = False
    spec["root"] = {"path": "rootfs", "readonly": False}
    (d / "config.json").write_text(json.dumps(spec))
    files = subprocess.run(["find", "."], cwd=d, capture_output=True, text=True, check=True).stdout
    cpio = work / "crun.cpio"
    with open(cpio, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=files.encode(), cwd=d, stdout=f, check=True)
    return cpio


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shoal", default=str(ROOT / "target" / "release" / "shoal"))
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    need_packages("crun", "podman", "runc")
    shoal, n = args.shoal, args.repeat
    work = work_dir("shoal-bench-vm-")
    env, rootfs = shoal_home_with_busybox(shoal, work)
    dag = work / "one.json"
    dag.write_text(json.dumps({"version": 1, "jobs": [
        {"id": "hi", "image": "busybox:latest", "command": ["echo", "hi"], "outputs": {"out": "stdout"}}]}))

    print("warming up (kernel extraction, initramfs, rootfs squashfs)...")
    argv = qemu_argv_of_a_run(shoal, dag, env)

    # The cold VM and the bare boot alternate, so that the machine's drift touches both alike.
    print(f"shoal run on the microvm backend and (a) the bare QEMU boot, alternately, {n} runs each...")
    bare_argv = bare_boot_argv(argv, poweroff_initramfs(work))
    walls, bares, timelines, cold_job = [], [], [], []
    for _ in range(n):
        t = time.perf_counter()
        out = subprocess.run([shoal, "run", str(dag), "--no-cache", "--json", "--warm-vms", "0"], env=env,
                             capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        report = json.loads(out.stdout)["jobs"][0]
        timelines.append(report["vm_timeline"])
        cold_job.append(report["wall_ms"] / 1000)
        t = time.perf_counter()
        subprocess.run(bare_argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bares.append(time.perf_counter() - t)
    shoal_vm, bare = statistics.median(walls), statistics.median(bares)

    print(f"warm pool: a job after one that waits 4 s, so a VM is booted and waiting, {n} runs...")
    chain = work / "chain.json"
    chain.write_text(json.dumps({"version": 1, "jobs": [
        {"id": "wait", "image": "busybox:latest", "command": ["sleep", "4"], "outputs": {"out": "stdout"}},
        {"id": "hi", "image": "busybox:latest", "command": ["echo", "hi"], "stdin": "jobs:wait/out",
         "outputs": {"out": "stdout"}}]}))
    warm_job, warm_tl = [], []
    for _ in range(n):
        out = subprocess.run([shoal, "run", str(chain), "--no-cache", "--json", "--warm-vms", "1"], env=env,
                             capture_output=True, text=True, check=True)
        hi = json.loads(out.stdout)["jobs"][1]
        warm_job.append(hi["wall_ms"] / 1000)
        warm_tl.append(hi["vm_timeline"])

    print("(b) busybox + crun initramfs...")
    sqfs = next((work / "home" / "rootfs").glob("*.sqfs"))
    modules_dir = next(Path("/lib/modules").glob("*-cloud-amd64"))
    crun_argv = bare_boot_argv(argv, crun_initramfs(work, modules_dir)) + [
        "-drive", f"id=r,file={sqfs},format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=r"]
    probe = subprocess.run(crun_argv, capture_output=True, text=True)
    if "hi" not in probe.stdout.split():
        print("    the crun initramfs did not print `hi`:", probe.stdout[-2000:])
    crun = timed(crun_argv, n)
    print("(c) namespace backend...")
    ns = timed([shoal, "run", str(dag), "--no-cache", "--json", "--backend", "namespace"], n, env=env)
    print("(d) podman...")
    podman = None
    if shutil.which("podman"):
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["podman", "import", "-", "shoal-bench-busybox"], input=tar, capture_output=True, check=True)
        # This host needs runc, cgroupfs and explicit rlimits (DESIGN section 8).
        podman = timed(["podman", "run", "--rm", "--network=none", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
                        "shoal-bench-busybox", "/bin/echo", "hi"], n)
    else:
        print("    podman is not installed: skipped")
    bare_exec = timed(["/bin/echo", "hi"], n)

    print(f"\nmedian of {n} runs; accelerator: {'kvm' if '-accel' in argv and argv[argv.index('-accel') + 1] == 'kvm' else 'tcg'}")
    print("| way to run `echo hi` | median ms | shoal microvm / this |")
    print("|---|---|---|")
    rows = [("shoal run, microvm backend (cold VM)", shoal_vm), ("(a) QEMU + kernel + init that powers off", bare),
            ("(b) QEMU + kernel + busybox and crun initramfs running the job", crun),
            ("(c) shoal run, namespace backend", ns)]
    if podman is not None:
        rows.append(("(d) podman run --rm --network=none", podman))
    rows.append(("(e) bare exec", bare_exec))
    for name, v in rows:
        print(f"| {name} | {v * 1000:.0f} | {shoal_vm / v:.2f} |")
    cold_med, warm_med = statistics.median(cold_job), statistics.median(warm_job)
    print(f"\nthe job alone (backend call, from the run report): cold VM {cold_med * 1000:.0f} ms, "
          f"warm VM {warm_med * 1000:.0f} ms: warm/cold {warm_med / cold_med:.2f} (figure to reach: <= 0.3)")
    wk = ["job_start_ms", "job_end_ms", "reply_written_ms", "qemu_exit_ms"]
    print("  warm timeline, ms since the go-ahead: " +
          " -> ".join(f"{k.removesuffix('_ms')} {statistics.median(t[k] for t in warm_tl):.0f}" for k in wk))
    keys = ["kernel_entry_ms", "init_start_ms", "job_start_ms", "job_end_ms", "reply_written_ms", "qemu_exit_ms"]
    med = {k: statistics.median(t[k] for t in timelines) for k in keys}
    print("\nboot timeline, ms since QEMU started (median; kernel entry is an upper bound):")
    print("  " + " -> ".join(f"{k.removesuffix('_ms')} {med[k]:.0f}" for k in keys))
    print(f"  shoal's own cost around the VM: {shoal_vm * 1000 - med['qemu_exit_ms']:.0f} ms "
          f"(process start, store, disks); in the guest: init {med['job_start_ms'] - med['init_start_ms']:.0f} ms "
          f"before the job, {med['reply_written_ms'] - med['job_end_ms']:.0f} ms after")
    # The machine drifts by tens of percent within a run: the ratio of each adjacent pair and
    # the ratio of the fastest of each are steadier than the ratio of the medians.
    pairs = sorted(w / b for w, b in zip(walls, bares))
    print(f"cold ratio to (a): {shoal_vm / bare:.2f} of the medians; median of the {n} adjacent pairs' ratios "
          f"{statistics.median(pairs):.2f} (range {pairs[0]:.2f}-{pairs[-1]:.2f}); fastest to fastest "
          f"{min(walls) / min(bares):.2f} (figure to reach: <= 1.15)")
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
