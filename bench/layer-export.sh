#!/usr/bin/env bash
# Layer export benchmark: kiln turning a directory into a compressed layer blob (tar, diffID
# sha256, compression, blob sha256, written to the store), against the shell pipelines
#   zstd: tar | tee >(sha256sum) | zstd -T0 | sha256sum
#   gzip: tar | pigz | sha256sum
# on the same data, alternately (A B A B ...), printing medians and the kiln/pipeline ratio.
#
#   bench/layer-export.sh            1 GiB random file and a 20,000-file/~100 MB tree, 3 rounds
#   bench/layer-export.sh --quick    64 MiB file and a 2,000-file tree, 1 round (CI)
#   ROUNDS=5 BENCH_WORK=/tmp/x bench/layer-export.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}
ROUNDS=${ROUNDS:-3}
BIG_BYTES=$((1 << 30))
TREE_FILES=20000
if [ "${1:-}" = "--quick" ]; then ROUNDS=1; BIG_BYTES=$((64 << 20)); TREE_FILES=2000; fi
for t in pigz zstd python3; do command -v "$t" >/dev/null || { echo "layer-export: $t is missing (apt-get install pigz zstd)" >&2; exit 1; }; done

cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln
data=$WORK/layer-data
"$HERE/make-data.sh" "$data" "$BIG_BYTES" "$TREE_FILES"
store=$WORK/layer-store

now() { date +%s.%N; }
# Wall seconds on stdout; the peak RSS (KB) of the command's largest process in $WORK/rss.
time_it() { local s; s=$(now); /usr/bin/time -f %M -o "$WORK/rss" bash -c '"$@"' _ "$@" >/dev/null; echo "$(now) - $s" | bc -l; }
rss() { tail -1 "$WORK/rss"; }
kiln_export() { rm -rf "$store"; "$KILN" --root "$store" layer create --compression "$1" "$2"; }
pipe_zstd() { tar -C "$1" -cf - . | tee >(sha256sum >/dev/null) | zstd -T0 -3 -q | sha256sum; }
pipe_gzip() { tar -C "$1" -cf - . | pigz -6 | sha256sum; }
export KILN store
export -f kiln_export pipe_zstd pipe_gzip
mb() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m / 1024}'; }
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.3f-%.3f", lo, hi}'; }

printf '%-28s %-8s %12s %16s %12s %16s %7s %8s %8s\n' "data" "comp" "kiln s" "kiln min-max" "pipeline s" "pipe min-max" "ratio" "kiln MB" "pipe MB"
for d in big tree; do
  dir=$data/$d
  [ "$d" = tree ] && dir=$data/tree
  label=$([ "$d" = big ] && echo "$((BIG_BYTES >> 20)) MiB random file" || echo "$TREE_FILES-file tree")
  for comp in zstd gzip; do
    ks=(); ps=(); kr=(); pr=()
    for _ in $(seq "$ROUNDS"); do
      ks+=("$(time_it kiln_export "$comp" "$dir")"); kr+=("$(rss)")
      if [ "$comp" = zstd ]; then ps+=("$(time_it pipe_zstd "$dir")"); else ps+=("$(time_it pipe_gzip "$dir")"); fi
      pr+=("$(rss)")
    done
    km=$(printf '%s\n' "${ks[@]}" | median); pm=$(printf '%s\n' "${ps[@]}" | median)
    printf '%-28s %-8s %12s %16s %12s %16s %6.2fx %8s %8s\n' "$label" "$comp" "$km" "$(printf '%s\n' "${ks[@]}" | range)" \
      "$pm" "$(printf '%s\n' "${ps[@]}" | range)" "$(echo "$km / $pm" | bc -l)" \
      "$(printf '%s\n' "${kr[@]}" | mb)" "$(printf '%s\n' "${pr[@]}" | mb)"
  done
done
rm -rf "$store"
echo "kiln writes and fsyncs the blob into its store; the pipelines only hash. ratio = kiln / pipeline (target <= 1.00)."
echo "MB: peak RSS of the largest process (median)"
