#!/usr/bin/env bash
# Build benchmark: kiln against docker/BuildKit (a private dockerd, the fastest peer measured
# here) and buildah (overlay, --layers), in one alternating run on bench/cases (small,
# copy-many with its unchanged and one-file-changed rebuilds, multistage, a 1 GiB RUN layer
# with its push and pull), printing medians, min-max, peak RSS and the ratios against
# BuildKit (builds.py).
#
#   bench/builds.sh            every case, 3 rounds (about 15 minutes on 2 cores)
#   bench/builds.sh --quick    the small case, 1 round, kiln and BuildKit only (CI)
#   ROUNDS=5 UNITS=copy-many bench/builds.sh
#
# bench/setup.sh makes the registry on 127.0.0.1:5000, the busybox base and the contexts;
# bench/dockerd.sh starts the private dockerd (stopped again at the end if this started it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--quick" ]; then
  ROUNDS=${ROUNDS:-1} UNITS=${UNITS:-small} TOOLS=${TOOLS:-kiln,buildkit}
else
  ROUNDS=${ROUNDS:-3} UNITS=${UNITS:-small,copy-many,multistage,big-layer} TOOLS=${TOOLS:-kiln,buildkit,buildah}
fi
"$HERE/setup.sh" >/dev/null
started=0
if [[ ",$TOOLS," == *",buildkit,"* ]] && ! "$HERE/dockerd.sh" status; then
  "$HERE/dockerd.sh" start
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then "$HERE/dockerd.sh" stop; fi; }
trap cleanup EXIT
python3 "$HERE/builds.py" --rounds "$ROUNDS" --units "$UNITS" --tools "$TOOLS"
