#!/usr/bin/env python3
"""Issue 19, item 3: one blob between two sites over a 100 Mbit/s link with 50 ms one way, by each
path a blob can take, against a plain TCP stream over the same link in the same run:

  tcp            iperf3, site A -> site B (the baseline)
  iroh direct    shoal's iroh endpoint (QUIC), A -> B
  mesh direct    /shoal/blobs/1 over the libp2p connection (TCP + pnet + noise + yamux), UDP
                 dropped so iroh has no path
  mesh relayed   the same through a relay node R (a circuit: A -> R -> B, 50 ms each hop),
                 A and B unable to reach each other

The link is bench/netlink_hub.py (userspace: this kernel has no sch_netem): three namespaces
(A 10.99.0.1, B 10.99.0.2, R 10.99.0.3), each frame delayed 50 ms and paced at 100 Mbit/s onto its
destination's port, 1.25 MB of queue (one bandwidth-delay product). A blob's time is the fetch
on B (`GET /v1/blobs/<hash>`, which fetches it from A first) minus the same GET once the blob is
there. Usage, as root: python3 bench/blobs_nat.py [MIB] (default 64); the binary is
target/release/shoal (`cargo build --release -p shoal-node`) unless SHOAL_BIN names another."""
import atexit, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print  # noqa: E402

MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 64
RATE_MBIT, DELAY_MS, QUEUE_BYTES = 100, 50, 1_250_000
PID = os.getpid()
NS = {k: f"shoal-fed-{PID}-0-blob{k}" for k in "abr"}
IP = {"a": "10.99.0.1", "b": "10.99.0.2", "r": "10.99.0.3"}
SHOAL = os.environ.get("SHOAL_BIN", str(ROOT / "target" / "release" / "shoal"))
procs, work = [], Path(tempfile.mkdtemp(prefix="shoal-blobs-nat-"))


def run(*cmd, ns=None, **kw):
    full = (["ip", "netns", "exec", NS[ns]] if ns else []) + [str(c) for c in cmd]
    return subprocess.run(full, check=True, capture_output=True, text=True, **kw).stdout


def cleanup():
    for p in procs:
        p.kill()
        p.wait()
    for ns in NS.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


atexit.register(cleanup)


def lab():
    for k, ns in NS.items():
        run("ip", "netns", "add", ns)
        run("ip", "link", "set", "lo", "up", ns=k)
    taps = [f"{NS[k]}={'sfb%d%s' % (PID % 100000, k)}" for k in "abr"]
    # Niced: on a busy machine a descheduled hub adds delay of its own.
    hub = subprocess.Popen(["nice", "-n", "-15", sys.executable, str(ROOT / "bench" / "netlink_hub.py"), str(RATE_MBIT), str(DELAY_MS),
                            str(QUEUE_BYTES), *taps], stdout=subprocess.PIPE, text=True)
    procs.append(hub)
    assert hub.stdout.readline().strip() == "ready"
    for k in "abr":
        tap = "sfb%d%s" % (PID % 100000, k)
        run("ip", "addr", "add", f"{IP[k]}/24", "dev", tap, ns=k)
        run("ip", "link", "set", tap, "up", ns=k)
    run("ping", "-c", "1", IP["b"], ns="a")  # ARP first: two more trips through the link
    out = run("ping", "-c", "4", "-i", "0.3", IP["b"], ns="a")
    rtt = [float(x) for x in re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out).groups()]
    print(f"link: {RATE_MBIT} Mbit/s, {DELAY_MS} ms one way each hop; ping A->B min/avg/max {rtt[0]:.1f}/{rtt[1]:.1f}/{rtt[2]:.1f} ms")


def nft(k, rules):
    run("nft", "-f", "-", ns=k, input=rules)


def tcp_baseline():
    server = subprocess.Popen(["ip", "netns", "exec", NS["b"], "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    procs.append(server)
    time.sleep(0.5)
    out = json.loads(run("iperf3", "-c", IP["b"], "-n", f"{MIB}M", "-J", ns="a"))
    server.wait()
    return out["end"]["sum_received"]["bits_per_second"] / 1e6


def node(k, home, key, listen, join=(), extra=()):
    ready = home / "ready.json"
    cmd = ["ip", "netns", "exec", NS[k], SHOAL, "node", "--http", "127.0.0.1:7170", "--blobs", f"{IP[k]}:7172",
           "--mesh-key", str(key), "--ready-file", str(ready), "--backend", "namespace", *extra]
    for a in listen:
        cmd += ["--listen", a]
    for j in join:
        cmd += ["--join", j]
    env = dict(os.environ, SHOAL_HOME=str(home / "store"), RUST_LOG="shoal_blobs=debug,warn")
    log = open(home / "node.log", "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.time() + 60
    while True:
        try:
            v = json.loads(ready.read_text())
            if v["listen"]:
                return p, v
        except (OSError, ValueError, KeyError):
            pass
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit(f"node in {NS[k]} did not start: {(home / 'node.log').read_text()[-2000:]}")
        time.sleep(0.1)


def stop(*ps):
    for p in ps:
        p.kill()
        p.wait()


def put(k, data_file):
    out = run("curl", "-sSf", "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{data_file}", "http://127.0.0.1:7170/v1/blobs", ns=k)
    return json.loads(out)["hash"]


def get_s(k, h):
    out = run("curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}", f"http://127.0.0.1:7170/v1/blobs/{h}", ns=k)
    return float(out)


def wait_live(k, other, within_s=60):
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            peers = json.loads(run("curl", "-sf", "http://127.0.0.1:7170/v1/peers", ns=k))["peers"]
            if any(p["node"] == other and not p.get("me") for p in peers):
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{NS[k]} never heard of {other[:12]}")


def fetch_mbit(a, b, nodes_home, warm=False):
    """Uploads a fresh random blob to node a, times its fetch by node b; Mbit/s."""
    if warm:  # The first fetch from a peer waits out iroh's connect timeout (3 s): not timed.
        small = nodes_home / "small"
        small.write_bytes(os.urandom(1000))
        get_s(b, put(a, small))
    data = nodes_home / "blob"
    data.write_bytes(os.urandom(MIB << 20))
    h = put(a, data)
    total = get_s(b, h)
    local = get_s(b, h)
    return (MIB << 20) * 8 / (total - local) / 1e6


def scenario(name, key, a_extra=(), b_extra=(), relay=False, warm=False):
    home = work / name
    for k in "abr":
        (home / k).mkdir(parents=True)
    extra_procs = []
    if relay:
        rp, rv = node("r", home / "r", key, [f"/ip4/{IP['r']}/tcp/7000"], extra=["--relay-server"])
        extra_procs.append(rp)
        circuit = f"{rv['listen'][0]}/p2p-circuit"
        ap, av = node("a", home / "a", key, [f"/ip4/{IP['a']}/tcp/7000", circuit], join=[rv["listen"][0]])
        bp, bv = node("b", home / "b", key, [f"/ip4/{IP['b']}/tcp/7000", circuit], join=[rv["listen"][0]])
    else:
        ap, av = node("a", home / "a", key, [f"/ip4/{IP['a']}/tcp/7000"])
        bp, bv = node("b", home / "b", key, [f"/ip4/{IP['b']}/tcp/7000"], join=[av["listen"][0]])
    wait_live("b", av["node"])
    mbit = fetch_mbit("a", "b", home, warm=warm)
    log = (home / "b" / "node.log").read_text()
    over_mesh = "fetching over the mesh" in log
    stop(ap, bp, *extra_procs)
    return mbit, over_mesh


def main():
    if os.geteuid() != 0 or not shutil.which("iperf3") or not Path(SHOAL).exists():
        raise SystemExit(f"run as root, with iperf3 installed and {SHOAL} built (cargo build --release -p shoal-node)")
    lab()
    key = work / "mesh.key"
    run(SHOAL, "mesh", "init", "--out", key)
    rows = []
    tcp = tcp_baseline()
    rows.append(("tcp (iperf3)", tcp, None))
    rows.append(("iroh direct", *scenario("iroh", key)))
    no_udp = "table inet bench {\n chain o {\n type filter hook output priority 0; meta l4proto udp drop\n }\n}\n"
    nft("a", no_udp)
    nft("b", no_udp)
    rows.append(("mesh stream direct", *scenario("mesh", key, warm=True)))
    apart = ("table inet apart {\n chain o {\n type filter hook output priority 0; ip daddr %s drop\n }\n"
             " chain i {\n type filter hook input priority 0; ip saddr %s drop\n }\n}\n")
    nft("a", apart % (IP["b"], IP["b"]))
    nft("b", apart % (IP["a"], IP["a"]))
    rows.append(("mesh stream relayed", *scenario("relayed", key, relay=True, warm=True)))
    print(f"\n{MIB} MiB blob, A -> B, {RATE_MBIT} Mbit/s, {DELAY_MS} ms one way (relayed: two such hops)")
    print(f"{'path':<22}{'Mbit/s':>8}{'x tcp':>8}  went over the mesh")
    for name, mbit, mesh in rows:
        print(f"{name:<22}{mbit:>8.1f}{mbit / tcp:>8.2f}  {'' if mesh is None else mesh}")


if __name__ == "__main__":
    main()
