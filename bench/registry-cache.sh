#!/usr/bin/env bash
# Registry build cache benchmark: machine B builds with the cache machine A pushed to the
# loopback registry, against a cold build, for kiln (--cache-to type=registry,mode=max /
# --cache-from), buildah (--layers --cache-to/--cache-from) and docker/BuildKit (docker
# 20.10's built-in BuildKit has no registry cache exporter without buildx: its inline cache,
# BUILDKIT_INLINE_CACHE=1 and --cache-from IMAGE, which holds the final stage only), on
# bench/cases' copy-many and multistage. Every "machine" is a fresh store; the base image is
# pulled before timing. bench/setup.sh and bench/dockerd.sh provide the registry, base,
# contexts and the private dockerd.
#
#   bench/registry-cache.sh            both cases, 3 rounds
#   bench/registry-cache.sh --quick    multistage, 1 round, kiln only (CI)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-3}
CASES=${CASES:-copy-many multistage}
TOOLS=${TOOLS:-kiln buildah docker}
if [ "${1:-}" = "--quick" ]; then ROUNDS=1; CASES=multistage; TOOLS=kiln; fi
PEERS=$("$HERE/setup.sh")
cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln
REG=127.0.0.1:5000
BASE=$REG/bench/busybox:1
W=$PEERS/regcache
mkdir -p "$W"
export CONTAINERS_CONF=$HERE/conf/containers.conf CONTAINERS_REGISTRIES_CONF=$HERE/conf/registries.conf
started_docker=0
if [[ " $TOOLS " == *" docker "* ]]; then
  if ! "$HERE/dockerd.sh" status; then "$HERE/dockerd.sh" start; started_docker=1; fi
fi
cleanup() { if [ "$started_docker" = 1 ]; then "$HERE/dockerd.sh" stop; fi; }
trap cleanup EXIT
DOCKER="env DOCKER_HOST=unix://$PEERS/docker/sock DOCKER_BUILDKIT=1 /usr/bin/docker"

now() { date +%s.%N; }
# Wall seconds on stdout; the peak RSS (KB) of the command's largest process in $W/rss.
timed() { local s; s=$(now); /usr/bin/time -f %M -o "$W/rss" bash -c '"$@"' _ "$@" >>"$W/log" 2>&1 || { echo "failed: $*" >&2; tail -20 "$W/log" >&2; exit 1; }; echo "$(now) - $s" | bc -l; }
rss() { tail -1 "$W/rss"; }
median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
bah() { buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay "${@:2}"; }
export -f bah

declare -A T
for round in $(seq "$ROUNDS"); do
  for case in $CASES; do
    ctx=$PEERS/ctx/$case
    df=$ctx/Dockerfile
    for tool in $TOOLS; do
      tag=$REG/bench/rc-$tool-$case:$round
      # (buildah wants a repository without a tag for its cache)
      cache=$REG/bench/rc-cache-$tool-$case-$round
      case $tool in
        kiln)
          rm -rf "$W/kiln-a" "$W/kiln-b" "$W/kiln-c"
          $KILN --root "$W/kiln-a" build -q -f "$df" -t "$tag" --cache-to "type=registry,ref=$cache:1,mode=max" "$ctx" >>"$W/log"
          $KILN --root "$W/kiln-b" pull -q "$BASE" >/dev/null; $KILN --root "$W/kiln-c" pull -q "$BASE" >/dev/null
          T[$case.$tool.warm]+="$(timed $KILN --root "$W/kiln-b" build -q -f "$df" --cache-from "$cache:1" "$ctx") "
          T[$case.$tool.warmrss]+="$(rss) "
          T[$case.$tool.cold]+="$(timed $KILN --root "$W/kiln-c" build -q -f "$df" "$ctx") " ;;
        buildah)
          rm -rf "$W/bah-a" "$W/bah-b" "$W/bah-c"
          bah "$W/bah-a" bud -q --layers --isolation chroot --tls-verify=false --cache-to "$cache" -f "$df" -t "$tag" "$ctx" >>"$W/log" 2>&1
          bah "$W/bah-b" pull -q --tls-verify=false "$BASE" >/dev/null; bah "$W/bah-c" pull -q --tls-verify=false "$BASE" >/dev/null
          T[$case.$tool.warm]+="$(timed bah "$W/bah-b" bud -q --layers --isolation chroot --tls-verify=false --cache-from "$cache" -f "$df" "$ctx") "
          T[$case.$tool.warmrss]+="$(rss) "
          T[$case.$tool.cold]+="$(timed bah "$W/bah-c" bud -q --layers --isolation chroot -f "$df" "$ctx") " ;;
        docker)
          reset_docker() { $DOCKER builder prune -af >/dev/null 2>&1; $DOCKER image rm -f $($DOCKER image ls -q) >/dev/null 2>&1 || true; $DOCKER pull -q "$BASE" >/dev/null; }
          reset_docker
          $DOCKER build -q --network none --build-arg BUILDKIT_INLINE_CACHE=1 -f "$df" -t "$tag" "$ctx" >>"$W/log" 2>&1
          $DOCKER push -q "$tag" >>"$W/log" 2>&1
          reset_docker
          T[$case.$tool.warm]+="$(timed $DOCKER build -q --network none --cache-from "$tag" -f "$df" "$ctx") "
          T[$case.$tool.warmrss]+="$(rss) "
          reset_docker
          T[$case.$tool.cold]+="$(timed $DOCKER build -q --network none -f "$df" "$ctx") " ;;
      esac
    done
  done
done

range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.3f-%.3f", lo, hi}'; }
printf '%-11s %-8s %10s %14s %10s %14s %10s %12s\n' case tool "cold s" "cold min-max" "warm s" "warm min-max" "warm/cold" "warm RSS MB"
for case in $CASES; do
  best=
  for tool in $TOOLS; do
    c=$(printf '%s\n' ${T[$case.$tool.cold]} | median); w=$(printf '%s\n' ${T[$case.$tool.warm]} | median)
    r=$(printf '%s\n' ${T[$case.$tool.warmrss]} | median | awk '{printf "%.0f", $1 / 1024}')
    printf '%-11s %-8s %10s %14s %10s %14s %10.2f %12s\n' "$case" "$tool" "$c" "$(printf '%s\n' ${T[$case.$tool.cold]} | range)" \
      "$w" "$(printf '%s\n' ${T[$case.$tool.warm]} | range)" "$(echo "$w / $c" | bc -l)" "$r"
    if [ "$tool" != kiln ] && { [ -z "$best" ] || [ "$(echo "$w < $best" | bc)" = 1 ]; }; then best=$w; fi
  done
  if [ -n "$best" ]; then
    kw=$(printf '%s\n' ${T[$case.kiln.warm]} | median)
    printf '%-11s kiln warm / fastest peer warm: %.2f\n' "$case" "$(echo "$kw / $best" | bc -l)"
  fi
done
