#!/usr/bin/env python3
"""Issue 19's figures (docs/BENCHMARKS.md), measured in the federation lab with real `shoal node`
processes and printed, never asserted. The lab runs are tests/it/federation_scale.rs
`bench_federation_figures` (ignored by default), which prints one JSON line per figure:

  claim_latency  a one-job DAG submitted at one NATed site whose job only another site's node may
                 run (a label); its claim fact's time minus the submit's start and minus its
                 acknowledgement, median of 7 per pair of sites, beside the ping round trip
  blob_transfer  a blob (SHOAL_FED_BLOB_MIB, default 32 MiB) over 100 Mbit/s and 50 ms one way:
                 public node -> a node behind an endpoint-independent NAT (one link, direct), and
                 that node -> a node behind a symmetric NAT (through the relay, a link each side),
                 against iperf3 public -> the first site over the same link; median of 3
  gossip         libp2p bytes out per node per second, N idle nodes over 30 s, then while the DAG
                 runs (SHOAL_FED_SCALE_NODES, default 16; SHOAL_FED_SCALE_JOBS, default 300: 32
                 NATed nodes do not form one mesh through one relay yet, see federation_scale.rs)
  makespan       that DAG from the submit to its last done fact

then runs the simulator (simulations/, `shoal-simulations`) on the closest configuration it has
(scenario `basic`: a layered DAG; N nodes + the relay, the lab's job time, 1 % loss, cores per node
as the lab offers them) and prints both side by side. The test binary runs target/debug/shoal (the
test harness takes the binary of its own profile). Usage, as root: python3 bench/federation.py
"""
import json, os, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print  # noqa: E402

ENV = dict(os.environ, CARGO_INCREMENTAL="0")


def lab_figures():
    subprocess.run(["cargo", "build", "-q", "-p", "shoal-node", "-p", "shoal-tests", "--tests"], cwd=ROOT, env=ENV, check=True)
    out = subprocess.run(
        ["cargo", "nextest", "run", "-p", "shoal-tests", "--run-ignored", "only", "-E", "test(bench_federation_figures)",
         "--no-capture"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    # A figure's line may follow log text that had no newline yet: take it from where it starts.
    figures = [json.loads(line[line.index('{"figure"'):]) for line in (out.stdout + out.stderr).splitlines()
               if '{"figure"' in line]
    if out.returncode != 0 or not figures:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        sys.exit(f"bench_federation_figures failed (exit {out.returncode})")
    return {f["figure"] + (f"{f['from']}->{f['to']}" if f["figure"] == "claim_latency" else ""): f for f in figures}


def simulator(nodes, jobs, job_ms, cores):
    sim = ROOT / "target" / "release" / "shoal-simulations"
    cmd = [str(sim)] if sim.exists() else ["cargo", "run", "-q", "--release", "-p", "shoal-simulations", "--"]
    out_dir = tempfile.mkdtemp(prefix="shoal-fed-sim-")
    args = ["--scenario", "basic", "--nodes", str(nodes), "--jobs", str(jobs), "--loss", "0.01",
            "--job-ms", str(max(1, round(job_ms))), "--cores", str(cores), "--out", out_dir]
    subprocess.run(cmd + args, cwd=ROOT, env=ENV, check=True, capture_output=True)
    summary = next(Path(out_dir).glob("*-summary.csv")).read_text().splitlines()
    row = dict(zip(summary[0].split(","), summary[1].split(",")))
    return row, " ".join(["shoal-simulations"] + args[:-2])


def main():
    f = lab_figures()
    print("federation figures (lab: real shoal nodes, target/debug/shoal, namespace backend)")
    print("\nclaim latency, submit at one site -> claim at another (median of the trials)")
    print(f"{'sites':<12} {'ping RTT ms':>11} {'RTT+30 ms':>10} {'from submit ms':>15} {'from ack ms':>12}")
    for k, c in f.items():
        if c["figure"] == "claim_latency":
            print(f"{c['from'] + '->' + c['to']:<12} {c['rtt_ms']:>11.1f} {c['rtt_ms'] + 30:>10.1f} "
                  f"{c['median_from_submit_ms']:>15.0f} {c['median_from_ack_ms']:>12.0f}")
    missing = [k for k in ("blob_transfer", "gossip", "makespan") if k not in f]
    if missing:
        sys.exit(f"bench_federation_figures printed no {', '.join(missing)}: run it alone to see why")
    b = f["blob_transfer"]
    print(f"\nblob of {b['mib']} MiB over {b['link_mbit']} Mbit/s, {b['one_way_ms']} ms one way (median of 3)")
    print(f"  iperf3 (TCP) public -> site : {b['tcp_mbit']:6.1f} Mbit/s")
    print(f"  shoal direct public -> site : {b['direct_mbit']:6.1f} Mbit/s  {b['direct_mbit'] / b['tcp_mbit']:.2f}x TCP (goal >= 0.8)")
    print(f"  shoal relayed site -> site  : {b['relayed_mbit']:6.1f} Mbit/s  {b['relayed_mbit'] / b['tcp_mbit']:.2f}x TCP (goal >= 0.5; two links)")
    g, m = f["gossip"], f["makespan"]
    row, sim_cmd = simulator(m["nodes"], m["jobs"], m["median_job_ms"], m["cores_per_node"])
    print(f"\ngossip, libp2p bytes out per node ({g['nodes']} nodes, the relay included; mesh formed in {g['formed_s']:.0f} s)")
    print(f"  idle, 30 s          : {g['idle_bytes_out_per_node_s'] / 1e3:7.2f} KB/s (goal <= 2)")
    print(f"  {g['dag_jobs']}-job DAG running : {g['dag_bytes_out_per_node_s'] / 1e3:7.2f} KB/s; "
          f"simulator {float(row['gossip_bytes_per_node_s']) / 1e3:.2f} KB/s")
    sim_s = float(row["makespan_ms"]) / 1e3
    print(f"\nmakespan, {m['jobs']} jobs on {m['nodes']} nodes: lab {m['makespan_s']:.1f} s "
          f"(median job {m['median_job_ms']:.0f} ms, {m['runners']} runners, {m['claims']} claims); "
          f"simulator {sim_s:.1f} s, lab/sim {m['makespan_s'] / sim_s:.2f}")
    print(f"  simulator: {sim_cmd}")
    print("  differs: the simulator's basic DAG is layered (about sqrt(n) layers) where the lab's has two "
          "(a fifth generators, the rest reading two of them); its links are 1-20 ms without NAT or relay "
          f"where the lab's are 90-110 ms round trips; it gives every node {m['cores_per_node']} cores of its own "
          f"where the lab's {m['nodes']} nodes share this machine's")
    print("\nraw: " + json.dumps(f))


if __name__ == "__main__":
    main()
