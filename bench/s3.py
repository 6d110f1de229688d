#!/usr/bin/env python3
"""Data in and out (issue 22, docs/BENCHMARKS.md): a 1 GiB output sent to the local S3 server
(s3s-fs, signatures checked) and read back, by shoal and by curl with presigned URLs, in turn,
each the median of REPEAT (3) rounds.

- upload: `shoal blob send blake3:<h> s3://bench/shoal` (what a job's `upload` runs: the blob
  streamed from the store, hashed as it goes, one signed PUT) against `curl -T FILE <presigned PUT>`.
- download: `shoal blob fetch s3://bench/obj` into a fresh store (what a URL or `s3://` input
  runs: the body streamed into the store, BLAKE3 and SHA-256 as it arrives) against
  `curl -o FILE <presigned GET>` onto the same disk.
Prints throughput (MiB/s) and shoal's share of curl's (>= 0.8 is the issue's bar).
MULTIPART=1 also times `shoal blob send` in 64 MiB parts."""
import os, shutil, socket, statistics, subprocess, sys, time
from pathlib import Path

from common import ROOT, print, work_dir

REPEAT = int(os.environ.get("REPEAT", "3"))
SIZE_MIB = int(os.environ.get("SIZE_MIB", "1024"))
SHOAL = Path(os.environ.get("SHOAL_BIN", ROOT / "target/release/shoal"))
KEY, SECRET = "benchkey", "benchsecret0123456789"


def s3s_fs():
    for d in os.environ.get("PATH", "").split(":") + [str(Path.home() / ".cargo/bin")]:
        p = Path(d) / "s3s-fs"
        if p.is_file():
            return p
    sys.exit("s3s-fs is missing: run scripts/setup.sh")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, env, before=None):
    if before:
        before()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shoal-node"], check=True, cwd=ROOT)
    work = work_dir("s3-bench-")
    root = work / "s3"
    (root / "bench").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen([s3s_fs(), "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY,
                               "--secret-key", SECRET, root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        env = dict(os.environ, SHOAL_HOME=str(work / "home"), AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1", RUST_LOG="warn")
        data = work / "data.bin"
        subprocess.run(["head", "-c", f"{SIZE_MIB}M", "/dev/urandom"], check=True, stdout=open(data, "wb"))
        blob = subprocess.run([SHOAL, "blob", "put", data], check=True, env=env, capture_output=True,
                              text=True).stdout.strip()
        presign = lambda obj, *a: subprocess.run([SHOAL, "s3", "presign", f"s3://bench/{obj}", *a], check=True,
                                                env=env, capture_output=True, text=True).stdout.strip()
        up = {"shoal": [], "curl": []}
        down = {"shoal": [], "curl": []}
        multi = []
        for i in range(REPEAT):
            up["shoal"].append(timed([SHOAL, "blob", "send", blob, "s3://bench/shoal"], env))
            put = presign("curl", "--put")
            up["curl"].append(timed(["curl", "-sSf", "-T", data, put], env))
            if os.environ.get("MULTIPART"):
                multi.append(timed([SHOAL, "blob", "send", blob, f"s3://bench/multi", "--s3-multipart-above",
                                    "64MiB", "--s3-part-size", "64MiB"], env))
            fresh = dict(env, SHOAL_HOME=str(work / f"fetch-{i}"))
            down["shoal"].append(timed([SHOAL, "blob", "fetch", "s3://bench/shoal"], fresh))
            shutil.rmtree(work / f"fetch-{i}")
            get = presign("curl")
            out = work / "curl-get.bin"
            down["curl"].append(timed(["curl", "-sSf", "-o", out, get], env))
            out.unlink()
        assert (root / "bench/shoal").read_bytes() == data.read_bytes() if SIZE_MIB <= 64 else True
        print(f"| {SIZE_MIB} MiB to and from s3s-fs | shoal (MiB/s) | curl, presigned (MiB/s) | shoal / curl |")
        print("|---|---|---|---|")
        for what, d in (("upload (PUT)", up), ("download (GET)", down)):
            a, b = statistics.median(d["shoal"]), statistics.median(d["curl"])
            print(f"| {what} | {SIZE_MIB / a:.0f} | {SIZE_MIB / b:.0f} | {b / a:.2f} |")
        if multi:
            a, b = statistics.median(multi), statistics.median(up["curl"])
            print(f"| upload in 64 MiB parts | {SIZE_MIB / a:.0f} | {SIZE_MIB / b:.0f} | {b / a:.2f} |")
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
