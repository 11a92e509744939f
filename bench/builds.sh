#!/usr/bin/env bash
# Build benchmark: kiln against docker/BuildKit (a private dockerd, the fastest peer measured
# here) and buildah (overlay, --layers), in one alternating run on the peer harness's cases
# (../shared/bench: small, copy-many with its cached and rebuild-one-file steps, multistage,
# big-layer), printing medians and the ratios against BuildKit.
#
#   bench/builds.sh            every case, 3 rounds (about 15 minutes on 2 cores)
#   bench/builds.sh --quick    the small case, 1 round, kiln and BuildKit only (CI)
#   ROUNDS=5 UNITS=copy-many bench/builds.sh
#
# The harness sets up its peers, the busybox base in a registry on 127.0.0.1:5000 and the
# contexts (../shared/bench/setup.sh, idempotent); kiln pulls the base from that registry.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
SHARED=$(cd "$TOP/../shared/bench" 2>/dev/null && pwd) || { echo "builds: ../shared/bench is missing" >&2; exit 1; }
export BENCH_WORK=${BENCH_WORK:-/tmp/peerbench}
if [ "${1:-}" = "--quick" ]; then
  export ROUNDS=${ROUNDS:-1} UNITS=${UNITS:-small} VARIANTS=${VARIANTS:-docker-buildkit,tool}
else
  export ROUNDS=${ROUNDS:-3} UNITS=${UNITS:-small,copy-many,multistage,big-layer}
  export VARIANTS=${VARIANTS:-buildah-overlay-chroot,docker-buildkit,tool}
fi
cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
export TOOL=$TOP/target/release/kiln
export KILN_ROOT=$BENCH_WORK/kiln-store
# Untimed reset between rounds: an empty store with only the base image pulled.
export TOOL_RESET="rm -rf $KILN_ROOT; $TOOL pull -q {base} >/dev/null"
export OUT=${OUT:-$BENCH_WORK/results/kiln-$(date +%Y%m%d-%H%M%S)}
"$SHARED/run-peers.sh" builds
python3 "$SHARED/lib/report.py" "$OUT" --suite builds --ref docker-buildkit --transpose
echo "(ratios are against docker-buildkit; below 1 means faster than BuildKit)"
