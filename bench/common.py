"""Helpers shared by the benchmarks: commands, timing, a busybox rootfs, a shoal home with busybox."""
import functools, os, statistics, subprocess, tempfile, time
from pathlib import Path

print = functools.partial(print, flush=True)
ROOT = Path(__file__).resolve().parent.parent


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, repeat, **kw):
    """Median wall time of `cmd` over `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_alternating(ours, peer, repeat, ours_kw=None, peer_kw=None):
    """Runs `ours` and `peer` in turn, `repeat` times each, so both see the same phases of a
    machine whose speed drifts. Returns (median ours, median peer, median of the pairs' ratios,
    fastest-to-fastest ratio), seconds and plain ratios."""
    a, b = [], []
    for _ in range(repeat):
        for cmd, kw, out in ((ours, ours_kw or {}, a), (peer, peer_kw or {}, b)):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
            out.append(time.perf_counter() - t)
    pairs = statistics.median(x / y for x, y in zip(a, b))
    return statistics.median(a), statistics.median(b), pairs, min(a) / min(b)


def busybox_rootfs(dest):
    """/bin/busybox (Debian's busybox-static) with one symlink per applet, /proc, /tmp, /etc/passwd."""
    dest.mkdir(parents=True)
    (dest / "bin").mkdir()
    sh(["cp", "/bin/busybox", str(dest / "bin" / "busybox")])
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", dest / "bin" / applet)
    for d in ["proc", "tmp", "etc"]:
        (dest / d).mkdir()
    (dest / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")


def shoal_home_with_busybox(shoal, work):
    """A fresh SHOAL_HOME under `work` holding busybox:latest; returns (env, rootfs path)."""
    env = dict(os.environ, SHOAL_HOME=str(work / "home"))
    rootfs = work / "rootfs"
    busybox_rootfs(rootfs)
    sh([shoal, "image", "build", str(rootfs), "--tag", "busybox:latest", "--env", "PATH=/bin"], env=env,
       stdout=subprocess.DEVNULL)
    return env, rootfs


def work_dir(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix))


def need_packages(*packages):
    """Installs the Debian packages a bench's peers need (they are not the project's own dependencies,
    so setup.sh leaves them out); idempotent."""
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
               != "install ok installed"]
    if missing:
        print(f"installing the peers' packages: {' '.join(missing)}")
        sh(["apt-get", "install", "-y", "-qq", *missing], stdout=subprocess.DEVNULL)


def start_node(shoal, key, ready, home, log, join=(), extra=(), rust_log=os.environ.get("BENCH_RUST_LOG", "warn"), start_timeout_s=60):
    """Starts `shoal node` on loopback (every port 0, namespace backend) with its store at `home`,
    logging to the open file `log`; waits for its ready file. Returns (process, the ready file's JSON:
    node, http, listen)."""
    import json
    ready.unlink(missing_ok=True)
    cmd = [shoal, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0", "--blobs", "127.0.0.1:0",
           "--mesh-key", str(key), "--ready-file", str(ready), "--backend", "namespace", *extra]
    for j in join:
        cmd += ["--join", j]
    env = dict(os.environ, SHOAL_HOME=str(home), RUST_LOG=rust_log)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + start_timeout_s
    while True:
        try:
            v = json.loads(ready.read_text())
            if v["listen"]:
                return proc, v
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the node at {home} did not start; see {getattr(log, 'name', 'its log')}")
        time.sleep(0.05)
