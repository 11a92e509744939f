#!/usr/bin/env bash
# Runs the builder's fuzz target registry_responses (WWW-Authenticate challenges, token
# answers, indexes a platform is picked from) for SECONDS (default 30). Seeds:
# testdata/fuzz-seeds/registry. Stable toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# -Z flags).
#
#   builder/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
t=registry_responses
s=../../testdata/fuzz-seeds/registry
mkdir -p "corpus/$t"
echo "== $t ($seconds s)"
log=$(mktemp)
if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer none "corpus/$t" "$s" -- \
    -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "fuzz: $t failed (a crash is kept in $(pwd)/artifacts/$t)" >&2
  exit 1
fi
grep -E "^stat::(number_of_executed_units|average_exec_per_sec)" "$log"
rm -f "$log"
