#!/usr/bin/env bash
# Runs the snapshotter's fuzz targets for SECONDS each (default 30): layer_apply (a tar,
# compressed or not, unpacked; nothing may land beside the destination) and oci_documents
# (manifests, indexes and configs decoded). Seeds: testdata/fuzz-seeds/{layer,oci}.
# Stable toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags).
#
#   snapshotter/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(layer_apply oci_documents)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
seeds=../../testdata/fuzz-seeds
for t in "${targets[@]}"; do
  case $t in layer_apply) s=$seeds/layer ;; oci_documents) s=$seeds/oci ;; *) echo "unknown target $t" >&2; exit 1 ;; esac
  mkdir -p "corpus/$t"
  echo "== $t ($seconds s)"
  log=$(mktemp)
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer none "corpus/$t" "$s" -- \
      -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t failed (a crash is kept in $(pwd)/artifacts/$t)" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec)" "$log"
  rm -f "$log"
done
