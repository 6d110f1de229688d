"""A userspace link between network namespaces, for benches on kernels without sch_netem: a hub of
TAP devices (one per namespace) that forwards each Ethernet frame to its destination's port after
that port's serialization time at RATE and a fixed one-way DELAY, dropping at the tail past
QUEUE_BYTES (a router's buffer). Frames to an unknown or broadcast MAC go to every other port.

Usage (as root): python3 bench/netlink_hub.py RATE_MBIT DELAY_MS QUEUE_BYTES NS=TAPNAME...
Creates each TAP, moves it into its namespace (which must exist) and serves until killed; the
TAPs go with the process. Prints "ready" once every TAP is in place."""
import collections, fcntl, os, select, struct, subprocess, sys, time

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
FRAME_BYTES_MAX = 65536


def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    rate_bps = float(sys.argv[1]) * 1e6
    delay_s = float(sys.argv[2]) / 1e3
    queue_bytes_max = int(sys.argv[3])
    ports = []
    for spec in sys.argv[4:]:
        ns, name = spec.split("=")
        fd = tap(name)
        subprocess.run(["ip", "link", "set", name, "netns", ns], check=True)
        ports.append({"fd": fd, "queue": collections.deque(), "queued": 0, "busy_until": 0.0})
    print("ready", flush=True)
    where = {}  # MAC -> port index
    fds = {p["fd"]: i for i, p in enumerate(ports)}
    dropped = 0
    while True:
        now = time.monotonic()
        # Deliver what is due.
        wait = 0.05
        for p in ports:
            q = p["queue"]
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                p["queued"] -= len(frame)
                try:
                    os.write(p["fd"], frame)
                except OSError:
                    pass
            if q:
                wait = min(wait, q[0][0] - now)
        readable, _, _ = select.select(list(fds), [], [], max(wait, 0))
        now = time.monotonic()
        for fd in readable:
            src = fds[fd]
            for _ in range(64):
                try:
                    frame = os.read(fd, FRAME_BYTES_MAX)
                except BlockingIOError:
                    break
                if len(frame) < 14:
                    continue
                where[frame[6:12]] = src
                dst = frame[0:6]
                outs = [where[dst]] if dst in where and not dst[0] & 1 else [i for i in range(len(ports)) if i != src]
                for o in outs:
                    if o == src:
                        continue
                    p = ports[o]
                    if p["queued"] + len(frame) > queue_bytes_max:
                        dropped += 1
                        continue
                    start = max(now, p["busy_until"])
                    p["busy_until"] = start + len(frame) * 8 / rate_bps
                    p["queue"].append((p["busy_until"] + delay_s, frame))
                    p["queued"] += len(frame)


if __name__ == "__main__":
    main()
