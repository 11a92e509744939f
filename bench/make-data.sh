#!/usr/bin/env bash
# The data layer-export.sh and raw-limits.sh share, made once under $1: big/big.bin (BYTES
# of random data) and tree/ (FILES files from gen-tree.py, about 5 KB each).
#
#   bench/make-data.sh DIR BYTES FILES
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
data=$1 bytes=$2 files=$3
mkdir -p "$data/big"
if [ "$(stat -c %s "$data/big/big.bin" 2>/dev/null || echo 0)" != "$bytes" ]; then
  head -c "$bytes" /dev/urandom >"$data/big/big.bin"
fi
if [ ! -f "$data/tree.$files.done" ]; then
  rm -rf "$data/tree" "$data"/tree.*.done
  python3 "$HERE/gen-tree.py" "$data/tree" "$files"
  touch "$data/tree.$files.done"
fi
