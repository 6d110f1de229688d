#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named) for SECONDS_PER_TARGET seconds each, one after
# the other on one core, and prints a table: executions, coverage, corpus, peak memory, crashes.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      # default 60 s, every target in fuzz/fuzz_targets
#
# Needs the nightly toolchain (installed if missing) and cargo-fuzz (installed if missing). Each
# target starts from its committed corpus (fuzz/corpus/<target>) and regressions
# (fuzz/regressions/<target>); what it adds goes to target/fuzz-work/<target>, not to the
# committed corpus (minimize it with `cargo fuzz cmin` before committing any). A crash, a hang
# (an input taking over TIMEOUT_S) or an allocation past RSS_LIMIT_MB stops that target and its
# input is written to fuzz/artifacts/<target>/; turn it into fuzz/regressions/<target>/<name>
# and a test in crates/fuzz-entry/tests/it/regressions.rs. Logs: target/fuzz-work/<target>.log.
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
shift || true
TIMEOUT_S=${TIMEOUT_S:-10}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-2048}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# No sanitizer: shoal is safe Rust, and without ASan each target runs several times faster on
# the few cores it gets; debug assertions and overflow checks stay on (cargo-fuzz's default).
build_flags=(-s none --codegen-units 16)
cargo +nightly fuzz build "${build_flags[@]}" >&2

# Inputs up to this size, in bytes: the archives and registry answers need room for a tar.
max_len() {
  case "$1" in
    layer | archive | registry) echo 131072 ;;
    *) echo 32768 ;;
  esac
}

work="$root/target/fuzz-work"
mkdir -p "$work"
rows=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$root/fuzz/regressions/$t"
  log="$work/$t.log"
  started=$(date +%s)
  set +e
  cargo +nightly fuzz run "${build_flags[@]}" "$t" "$work/$t" "$root/fuzz/corpus/$t" "$root/fuzz/regressions/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT_S" -rss_limit_mb="$RSS_LIMIT_MB" \
    -max_len="$(max_len "$t")" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  took=$(($(date +%s) - started))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    outcome="0"
  else
    artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -1 || true)
    why=$(grep -oE 'deadly signal|panicked|timeout|out-of-memory|leak' "$log" | head -1 || true)
    outcome="1 (${why:-exit $rc}: ${artifact:-see $log})"
  fi
  rows+=("| $t | $took | ${execs:-?} | $(( ${execs:-0} / (took > 0 ? took : 1) )) | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} | $outcome |")
done

echo
echo "| target | seconds | executions | per second | coverage (edges) | features | corpus | peak RSS MB | crashes |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
