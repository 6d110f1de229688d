#!/usr/bin/env bash
# The main job (README): setup, then the sample DAG, results printed.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_QUIET=1 scripts/setup.sh
exec target/debug/shoal run examples/pipeline.json "$@"
