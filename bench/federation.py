#!/usr/bin/env python3
"""Issue 19's figures (docs/BENCHMARKS.md), measured in the federation lab with real `shoal node`
processes and printed, never asserted. The lab runs are tests/it/federation_scale.rs
`bench_federation_figures` (ignored by default), which prints one line per figure, `shoal-figure`
and its JSON:

  claim_latency  a one-job DAG submitted at one NATed site whose job only another site's node may
                 run (a label); median of 7 per pair of sites, beside the ping round trip (both
                 sites' to the relay: no ping crosses the NATs). Two spans: from the Submit fact to
                 the claim fact (their authors' times, read from the submitting node's event
                 stream; one clock for the whole lab), and from `shoal submit`'s start (the CLI's
                 own start, the upload, and the wait until another node holds the DAG's blobs,
                 after which the node makes the Submit fact and acknowledges)
  dcutr          SHOAL_FED_DCUTR_TRIALS (default 10) trials, each with fresh nodes at both
                 endpoint-independent NATs and the symmetric one, listening through the relay, one
                 dialing the others through it: upgraded to a direct connection by a hole punch
                 within 30 s, and stayed relayed for 10 s towards the symmetric NAT
  blob_transfer  a blob (SHOAL_FED_BLOB_MIB, default 32 MiB) over 100 Mbit/s and 50 ms one way:
                 public node -> a node behind an endpoint-independent NAT (one link, direct), and
                 that node -> a node behind a symmetric NAT (through the relay, a link each side),
                 against iperf3 public -> the first site over the same link; median of 3
  gossip         libp2p bytes out per node per second, N idle nodes over 30 s (60 s after the
                 mesh formed; the members apart from the relay, which forwards the relayed ones'
                 bytes), then while the DAG runs (SHOAL_FED_SCALE_NODES, default 16, + the relay;
                 SHOAL_FED_SCALE_JOBS, default 300)
  makespan       that DAG from the submit to its last done fact, with the sites it ran on

then runs the simulator (simulations/, `shoal-simulations`) on the same run: the same DAG (the
lab's `fan_dag`, its jobs renamed j0, j1, ...), the same nodes per site with the lab's one-way
delays, jitter, loss (as TCP retransmissions) and NATs (`--site`), the relay, the same submitter,
each job taking its own claim-to-done time in the lab (`--job-work`: the lab's total work and longest
jobs), the cores each lab node advertises; five seeds. An endpoint-independent site where the lab punched no hole is simulated
as relayed, as its traffic went. It prints both makespans and gossip rates side by side, and what the two do not share.

The test binary runs target/debug/shoal (the test harness takes the binary of its own profile).
Usage, as root: python3 bench/federation.py [--log FILE]   (--log: read the figures of an earlier
run's output, `cargo nextest run ... --no-capture > FILE 2>&1`, instead of running the lab).
SHOAL_FED_BENCH_PARTS=latency,blob,gossip (all three by default) runs only some of the test's parts;
this script wants all three.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print  # noqa: E402

ENV = dict(os.environ, CARGO_INCREMENTAL="0")
MARKER = "shoal-figure "
SIM_SEEDS = 5


def lab_output():
    subprocess.run(["cargo", "build", "-q", "-p", "shoal-node", "-p", "shoal-tests", "--tests"], cwd=ROOT, env=ENV, check=True)
    out = subprocess.run(
        ["cargo", "nextest", "run", "-p", "shoal-tests", "--run-ignored", "only", "-E", "test(bench_federation_figures)",
         "--no-capture"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.stderr.write(text[-8000:])
        sys.exit(f"bench_federation_figures failed (exit {out.returncode})")
    return text


def figures(text):
    # A figure's line may follow log text that had no newline yet: take it from its marker.
    fs = [json.loads(line[line.index(MARKER) + len(MARKER):]) for line in text.splitlines() if MARKER in line]
    if not fs:
        sys.exit("bench_federation_figures printed no figure")
    return {f["figure"] + (f"{f['from']}->{f['to']}" if f["figure"] == "claim_latency" else ""): f for f in fs}


def fan_dag(jobs):
    """federation_scale.rs's `fan_dag`, its jobs named j0, j1, ... as the simulator wants them."""
    gens = max(jobs // 5, 2)
    specs = [{"id": f"j{i}", "image": "busybox:latest", "command": ["sh", "-c", f"echo gen {i}"],
              "outputs": {"out": "stdout"}} for i in range(gens)]
    for k in range(jobs - gens):
        a, b = k % gens, (k * 7 + 1) % gens
        specs.append({"id": f"j{gens + k}", "image": "busybox:latest", "command": ["sh", "-c", "cat /input/a /input/b"],
                      "inputs": {"a": f"jobs:j{a}/out", "b": f"jobs:j{b}/out"}, "outputs": {"out": "stdout"}})
    return json.dumps({"version": 1, "jobs": specs})


def simulator(m, g):
    """The simulator on the lab's run `m` (makespan figure) with its gossip figure `g`: the sites as
    the lab made them, except that an endpoint-independent site whose nodes punched no hole is
    simulated as relayed (`nat=symmetric`), as its traffic went. Each job takes its own
    claim-to-done time in the lab (`--job-work`; older runs without them: every job the lab's mean),
    so the total work and the longest jobs are the lab's."""
    sim = ROOT / "target" / "release" / "shoal-simulations"
    punched = g.get("paths_at_end", {}).get("hole_punched", 0)
    sites = [dict(s, nat="symmetric" if s["nat"] == "eim" and punched == 0 else s["nat"]) for s in m["sites"]]
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "shoal-simulations"], cwd=ROOT, env=ENV, check=True)
    with tempfile.TemporaryDirectory(prefix="shoal-fed-sim-") as tmp:
        return run_simulator(sim, m, sites, Path(tmp))


def run_simulator(sim, m, sites, work):
    (work / "fan.json").write_text(fan_dag(m["jobs"]))
    replay = []
    if "job_ms" in m:
        # A job with no time measured (its done's author had no claim in that node's view) takes the mean.
        (work / "work.txt").write_text(",".join(str(ms or round(m["mean_job_ms"])) for ms in m["job_ms"]))
        replay = ["--job-work", str(work / "work.txt")]
    flags = [f"name={s['name']},nodes={s['nodes']},one_way_ms={s['one_way_ms']},jitter_ms={s['jitter_ms']},"
             f"loss_pct={s['loss_pct']:g},nat={s['nat']}" for s in sites]
    args = ["--scenario", "basic", "--nodes", str(m["nodes"]), "--dag", str(work / "fan.json"),
            "--job-ms", str(max(1, round(m["mean_job_ms"]))), "--cores", str(m["cores_per_node"]),
            "--submitter", str(m["submitter"])] + replay + [a for f in flags for a in ("--site", f)]
    rows = []
    for seed in range(1, SIM_SEEDS + 1):
        out = work / f"s{seed}"
        subprocess.run([str(sim)] + args + ["--seed", str(seed), "--out", str(out)], cwd=ROOT, env=ENV, check=True,
                       capture_output=True)
        summary = next(out.glob("*-summary.csv")).read_text().splitlines()
        rows.append(dict(zip(summary[0].split(","), summary[1].split(","))))
    cmd = " ".join(a if not a.startswith("name=") else f"'{a}'" for a in args).replace(f"{work}/", "")
    return rows, f"shoal-simulations {cmd}", sites


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", type=Path, help="the output of an earlier run of bench_federation_figures")
    a = p.parse_args()
    f = figures(a.log.read_text() if a.log else lab_output())
    print("federation figures (lab: real shoal nodes, target/debug/shoal, namespace backend)")
    print("\nclaim latency, submit at one site -> claim at another (median of the trials; goal <= RTT + 30 ms)")
    print(f"{'sites':<10} {'ping RTT':>8} {'Submit->claim':>13} {'minus RTT':>9} {'submit start->claim':>19} "
          f"{'submit acked after':>18}  (ms)")
    for c in (c for c in f.values() if c["figure"] == "claim_latency"):
        acked = statistics.median(s - k for s, k in zip(c["from_submit_ms"], c["from_ack_ms"]))
        print(f"{c['from'] + '->' + c['to']:<10} {c['rtt_ms']:>8.1f} {c['median_from_fact_ms']:>13.0f} "
              f"{c['median_from_fact_ms'] - c['rtt_ms']:>+9.0f} {c['median_from_submit_ms']:>19.0f} {acked:>18.0f}")
    missing = [k for k in ("dcutr", "blob_transfer", "gossip", "makespan") if k not in f]
    if missing:
        sys.exit(f"bench_federation_figures printed no {', '.join(missing)}: run it alone to see why")
    d = f["dcutr"]
    print(f"\nDCUtR, {d['trials']} trials, fresh nodes each")
    print(f"  endpoint-independent <-> endpoint-independent: upgraded to direct {d['eim_upgraded']}/{d['trials']} "
          f"(median {d['median_upgrade_ms']:.0f} ms from the dialer's start)")
    print(f"  endpoint-independent <-> symmetric           : stayed relayed {d['symmetric_stayed_relayed']}/{d['trials']} "
          f"({d['symmetric_failed_punches']} failed hole punches counted)")
    b = f["blob_transfer"]
    print(f"\nblob of {b['mib']} MiB over {b['link_mbit']} Mbit/s, {b['one_way_ms']} ms one way (median of 3)")
    print(f"  iperf3 (TCP) public -> site : {b['tcp_mbit']:6.1f} Mbit/s")
    print(f"  shoal direct public -> site : {b['direct_mbit']:6.1f} Mbit/s  {b['direct_mbit'] / b['tcp_mbit']:.2f}x TCP (goal >= 0.8)")
    print(f"  shoal relayed site -> site  : {b['relayed_mbit']:6.1f} Mbit/s  {b['relayed_mbit'] / b['tcp_mbit']:.2f}x TCP (goal >= 0.5; two links)")
    g, m = f["gossip"], f["makespan"]
    rows, sim_cmd, sim_sites = simulator(m, g)
    sim_s = [float(r["makespan_ms"]) / 1e3 for r in rows]
    sim_gossip = [float(r["gossip_bytes_per_node_s"]) for r in rows]
    sim_dups = [int(r["extra_starts"]) for r in rows]
    sites = ", ".join(f"{s['name']} {s['nodes']} ({s['nat']}, {s['one_way_ms']}±{s['jitter_ms']} ms, {s['loss_pct']:g} %)"
                      for s in m["sites"])
    print(f"\nlab vs simulator: {m['jobs']}-job DAG on {m['nodes']} nodes: {sites}; "
          f"simulator: {SIM_SEEDS} seeds, median [min-max]")
    print(f"  {'':<34} {'lab':>9} {'simulator':>22} {'lab/sim':>8}")
    sm = statistics.median(sim_s)
    print(f"  {'makespan, s':<34} {m['makespan_s']:>9.1f} {sm:>9.1f} [{min(sim_s):.1f}-{max(sim_s):.1f}]{'':>4} "
          f"{m['makespan_s'] / sm:>8.2f}  (goal: within 15 %)")
    gm = statistics.median(sim_gossip)
    idle, running = g["idle_bytes_out_per_node_s"], g["dag_bytes_out_per_node_s"]
    print(f"  {'gossip while it runs, KB/s/node':<34} {running / 1e3:>9.2f} {gm / 1e3:>9.2f} "
          f"[{min(sim_gossip) / 1e3:.2f}-{max(sim_gossip) / 1e3:.2f}]{'':>1} {running / gm:>8.2f}")
    print(f"  {'  less the idle rate':<34} {(running - idle) / 1e3:>9.2f} {'':>22} {(running - idle) / gm:>8.2f}")
    print(f"  {'runs beyond one per job':<34} {m['claims'] - m['jobs']:>9} {statistics.median(sim_dups):>9.0f} "
          f"[{min(sim_dups)}-{max(sim_dups)}]")
    sim_wasted = [float(r["wasted_ms"]) / 1e3 for r in rows]
    slots = m["nodes"] * m["cores_per_node"]
    if "done_facts" in m:
        lab_wasted = (m["done_facts"] - m["jobs"]) * m["mean_job_ms"] / 1e3
        print(f"  {'  of them finished':<34} {m['done_facts'] - m['jobs']:>9} {'(stopped early)':>22}")
        print(f"  {'core-s spent on extra runs':<34} {lab_wasted:>9.0f} {statistics.median(sim_wasted):>9.0f} "
              f"[{min(sim_wasted):.0f}-{max(sim_wasted):.0f}]")
        print(f"  {'simulator + the lab extra runs':<34} {'':>9} {sm + (lab_wasted - statistics.median(sim_wasted)) / slots:>9.1f}"
              f"{'':>13} {m['makespan_s'] / (sm + (lab_wasted - statistics.median(sim_wasted)) / slots):>8.2f}"
              f"  (an estimate: the lab's finished extra runs' core time spread over its {slots} cores)")
    print(f"  lab connections at the end (node -> peer): {g.get('paths_at_end')}; simulated sites: "
          + ", ".join(f"{s['name']} {s['nat']}" for s in sim_sites))
    print(f"  lab: mean job {m['mean_job_ms']:.0f} ms claim to done (median {m['median_job_ms']:.0f}), "
          f"{m['runners']} nodes ran jobs; mesh formed in {g['formed_s']:.0f} s; idle {idle / 1e3:.2f} KB/s/node "
          f"(goal <= 2, 30 s)"
          + (f"; without the relay's forwarding: {g['idle_member_bytes_out_per_node_s'] / 1e3:.2f} KB/s per member, "
             f"the relay {g['idle_relay_bytes_out_s'] / 1e3:.2f} KB/s" if "idle_relay_bytes_out_s" in g else ""))
    print(f"  simulator: {sim_cmd} --seed 1..{SIM_SEEDS}  (fan.json: fan_dag here; work.txt: the lab's job_ms)")
    each = "replays each job's claim-to-done time of the lab" if "job_ms" in m else "runs every job in the lab's mean claim-to-done time"
    print(f"  not shared: the simulator {each} on "
          f"{m['cores_per_node']} cores of each node's own, where the lab's {m['nodes']} nodes share this machine's "
          f"{m['cores_per_node']} cores; its gossip counts shoal's messages (facts at their CBOR size, "
          "anti-entropy, heartbeats) where the lab counts every libp2p byte (Kademlia, identify, ping, "
          "AutoNAT, relay reservations, gossipsub control, noise and yamux framing)")
    print("\nraw: " + json.dumps(f))


if __name__ == "__main__":
    main()
