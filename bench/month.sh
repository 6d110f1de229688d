#!/usr/bin/env bash
# A month of a pool's steady traffic at 1,000 nodes (issue 20, docs/SIMULATIONS.md): the
# simulator's `--scenario month` (DAGs of 20 jobs submitted over 30 days, 1 %/h churn, the node's
# compaction with its one-day retention) once as the node runs it and once with compaction off,
# then each node's ledger bytes over time from both on one chart (docs/sim/month-ledger.svg).
# About 25 minutes on this 2-core machine. NODES=.. JOBS=.. change the size.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-1000}
JOBS=${JOBS:-20000}
OUT=${OUT:-target/sim/month}
cargo build -p shoal-simulations --release ${CARGO_QUIET:+--quiet}
sim=target/release/shoal-simulations
name="month-${NODES}n-${JOBS}j-s1"
"$sim" --nodes "$NODES" --jobs "$JOBS" --scenario month --out "$OUT/compacted" | tail -1
"$sim" --nodes "$NODES" --jobs "$JOBS" --scenario month --ledger-retention-ms 0 --out "$OUT/kept" | tail -1
"$sim" --plot-csv "compacted after a day (the node)=$OUT/compacted/$name-metrics.csv" \
  --plot-csv "never compacted=$OUT/kept/$name-metrics.csv" --plot-column ledger_bytes_mean \
  --plot-out docs/sim/month-ledger.svg
python3 - "$OUT/compacted/$name-metrics.csv" "$OUT/kept/$name-metrics.csv" <<'PY'
import csv, sys
runs = [list(csv.DictReader(open(p))) for p in sys.argv[1:]]
print("| day | ledger KB/node, compacted (mean / max) | never compacted (mean / max) | ratio |")
print("|---|---|---|---|")
for day in (1, 2, 7, 14, 21, 30):
    rows = [min(r, key=lambda x: abs(float(x["t_s"]) / 86400 - day)) for r in runs]
    a, b = (float(x["ledger_bytes_mean"]) / 1000 for x in rows)
    am, bm = (float(x["ledger_bytes_max"]) / 1000 for x in rows)
    print(f"| {day} | {a:.1} / {am:.1} | {b:.1} / {bm:.1} | {a / b:.2} |")
PY
