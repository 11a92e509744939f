#!/usr/bin/env bash
# Runs the parser fuzz target for SECONDS (default 30), seeded from BuildKit's conformance
# corpus (../shared/conformance). Works on the stable toolchain (RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its -Z flags); installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus=${KILN_CONFORMANCE_DIR:-$(cd ../../.. && pwd)/shared/conformance}
[ -d "$corpus" ] || { echo "fuzz: no conformance corpus at $corpus" >&2; exit 1; }
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
i=0
for f in "$corpus"/buildkit/frontend/dockerfile/parser/*/*/Dockerfile "$corpus"/buildkit/frontend/dockerfile/parser/testfile-line/Dockerfile; do
  cp "$f" "$seeds/seed-$i"; i=$((i + 1))
done
while IFS= read -r line; do printf '%s' "$line" >"$seeds/seed-$i"; i=$((i + 1)); done \
  < <(grep -v '^#' "$corpus/buildkit/frontend/dockerfile/shell/envVarTest" | cut -d'|' -f2 | sed 's/^ *//;s/ *$//')
mkdir -p corpus/parse_expand_ignore
RUSTC_BOOTSTRAP=1 cargo fuzz run parse_expand_ignore --sanitizer none corpus/parse_expand_ignore "$seeds" -- \
  -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25
