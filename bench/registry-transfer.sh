#!/usr/bin/env bash
# Registry transfer benchmark: push and pull of a 5-layer image of incompressible data
# (1 GiB in all) to and from Debian's docker-registry on 127.0.0.1, kiln against
# `skopeo copy` on the same image, alternately, printing medians and the kiln/skopeo ratio.
#
#   push:  kiln push REG/bench/kiln:1          vs  skopeo copy oci:DIR:1 docker://REG/bench/skopeo:1
#   pull:  kiln pull REG/bench/kiln:1 (new store) vs skopeo copy docker://REG/bench/skopeo:1 oci:NEWDIR:1
#
# The registry is emptied before each push round; each pull goes to a fresh store/folder.
#
#   bench/registry-transfer.sh            5 x 200 MiB layers, 3 rounds
#   bench/registry-transfer.sh --quick    5 x 8 MiB layers, 1 round (CI)
#   ROUNDS=5 BENCH_WORK=/tmp/x bench/registry-transfer.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}/registry
ROUNDS=${ROUNDS:-3}
LAYER_MIB=200
if [ "${1:-}" = "--quick" ]; then ROUNDS=1; LAYER_MIB=8; fi
for t in skopeo docker-registry curl bc; do command -v "$t" >/dev/null || { echo "registry-transfer: $t is missing (.ci/install-deps)" >&2; exit 1; }; done

cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln
mkdir -p "$WORK"

# The registry, on a free loopback port, its storage emptied by reset_registry.
port=5100
while curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null || ss -ltnH "sport = :$port" | grep -q .; do port=$((port + 1)); done
REG=127.0.0.1:$port
reg_pid=
stop_registry() { if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; reg_pid=; fi; }
trap stop_registry EXIT
reset_registry() {
  stop_registry
  rm -rf "$WORK/registry-data"
  REGISTRY_HTTP_ADDR=$REG REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$WORK/registry-data \
    docker-registry serve "$TOP/.ci/registry.yml" >"$WORK/registry.log" 2>&1 &
  reg_pid=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && return; sleep 0.1; done
  echo "registry did not start" >&2; cat "$WORK/registry.log" >&2; exit 1
}

# The image: five COPY layers of random data, built once into a source store, and the same
# image as an OCI layout for skopeo.
src=$WORK/src-store
ctx=$WORK/ctx-$LAYER_MIB
if [ ! -f "$ctx/done" ]; then
  rm -rf "$ctx"; mkdir -p "$ctx"
  for i in 1 2 3 4 5; do head -c $((LAYER_MIB << 20)) /dev/urandom >"$ctx/layer$i.bin"; done
  printf 'FROM scratch\nCOPY layer1.bin /1/\nCOPY layer2.bin /2/\nCOPY layer3.bin /3/\nCOPY layer4.bin /4/\nCOPY layer5.bin /5/\n' >"$ctx/Dockerfile"
  touch "$ctx/done"
fi
rm -rf "$src" "$WORK/oci-src"
"$KILN" --root "$src" build -q --compression gzip -t "bench/transfer:$LAYER_MIB" "$ctx" >/dev/null
"$KILN" --root "$src" save --format oci-archive -o "$WORK/src.tar" "bench/transfer:$LAYER_MIB"
mkdir -p "$WORK/oci-src" && tar -C "$WORK/oci-src" -xf "$WORK/src.tar" && rm "$WORK/src.tar"
oci_ref=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["manifests"][0]; print(m["annotations"]["org.opencontainers.image.ref.name"])' "$WORK/oci-src/index.json")
bytes=$(python3 -c 'import json,sys,os; d=sys.argv[1]; m=json.load(open(d+"/index.json"))["manifests"][0]["digest"].split(":")[1]; man=json.load(open(d+"/blobs/sha256/"+m)); print(sum(l["size"] for l in man["layers"]))' "$WORK/oci-src")

now() { date +%s.%N; }
# Wall seconds on stdout; the peak RSS (KB) of the command's largest process in $WORK/rss.
time_it() { local s; s=$(now); /usr/bin/time -f %M -o "$WORK/rss" bash -c '"$@"' _ "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; echo "$(now) - $s" | bc -l; }
rss() { tail -1 "$WORK/rss"; }
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
mb() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m / 1024}'; }

kiln_push() { "$KILN" --root "$src" push -q "bench/transfer:$LAYER_MIB" "$REG/bench/kiln:1"; }
skopeo_push() { skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci-src:$oci_ref" "docker://$REG/bench/skopeo:1"; }
kiln_pull() { rm -rf "$WORK/pull-store"; "$KILN" --root "$WORK/pull-store" pull -q "$REG/bench/kiln:1"; }
skopeo_pull() { rm -rf "$WORK/pull-oci"; skopeo copy -q --src-tls-verify=false "docker://$REG/bench/skopeo:1" "oci:$WORK/pull-oci:1"; }
export KILN src LAYER_MIB REG WORK oci_ref
export -f kiln_push skopeo_push kiln_pull skopeo_pull

kp=(); sp=(); kl=(); sl=()
declare -A R
# time_it into array $1, peak RSS into R[$1]
take() { local t; t=$(time_it "$2"); eval "$1+=(\"\$t\")"; R[$1]+="$(rss) "; }
for r in $(seq "$ROUNDS"); do
  # Alternate which tool goes first.
  reset_registry
  if [ $((r % 2)) = 1 ]; then take kp kiln_push; take sp skopeo_push
  else take sp skopeo_push; take kp kiln_push; fi
  if [ $((r % 2)) = 1 ]; then take kl kiln_pull; take sl skopeo_pull
  else take sl skopeo_pull; take kl kiln_pull; fi
done
# The pulled image is the pushed one, byte for byte.
"$KILN" --root "$WORK/pull-store" system check >/dev/null

mb=$(echo "$bytes / 1000000" | bc)
printf 'image: 5 layers, %s MB compressed (incompressible data), %s round(s), registry %s\n' "$mb" "$ROUNDS" "$REG"
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.3f-%.3f", lo, hi}'; }
printf '%-6s %10s %14s %10s %14s %9s %9s %7s %8s %8s\n' step "kiln s" "kiln min-max" "skopeo s" "sk min-max" "kiln MB/s" "sk MB/s" ratio "kiln RSS" "sk RSS"
for step in push pull; do
  if [ $step = push ]; then ks=("${kp[@]}"); ss=("${sp[@]}"); kr=${R[kp]}; sr=${R[sp]}
  else ks=("${kl[@]}"); ss=("${sl[@]}"); kr=${R[kl]}; sr=${R[sl]}; fi
  k=$(printf '%s\n' "${ks[@]}" | median); s=$(printf '%s\n' "${ss[@]}" | median)
  printf '%-6s %10s %14s %10s %14s %9.0f %9.0f %7.2f %8s %8s\n' $step "$k" "$(printf '%s\n' "${ks[@]}" | range)" "$s" "$(printf '%s\n' "${ss[@]}" | range)" \
    "$(echo "$mb / $k" | bc -l)" "$(echo "$mb / $s" | bc -l)" "$(echo "$k / $s" | bc -l)" "$(printf '%s\n' $kr | mb)" "$(printf '%s\n' $sr | mb)"
done
echo "(ratio = kiln / skopeo; below 1 means kiln is faster; RSS: peak of the largest process, MB, median)"
