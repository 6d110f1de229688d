#!/usr/bin/env bash
# The main job (README): setup, then the sample DAG, each job in its own microVM, results printed.
# Extra arguments go to `shoal run` (e.g. --backend namespace, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_QUIET=1 scripts/setup.sh
target/debug/shoal run examples/pipeline.json "$@"
echo
echo "--- shoal get report report"
target/debug/shoal get report report
