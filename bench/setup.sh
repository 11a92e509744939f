#!/usr/bin/env bash
# Sets up what the peer benchmarks need, idempotently, and prints the work directory:
# the Debian packages (kiln's .ci/install-deps: buildah, docker.io, skopeo, runc, crun, ...),
# a registry on 127.0.0.1:5000 (Debian's docker-registry), the busybox base image made
# without network (testdata/make-busybox-rootfs.sh, imported and pushed by kiln as
# 127.0.0.1:5000/bench/busybox:1) and the build contexts of bench/cases (generated files).
#
#   bench/setup.sh        (BENCH_WORK=/tmp/kiln-bench by default; the work is under peers/)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}/peers
REG=127.0.0.1:5000
BASE=$REG/bench/busybox:1
"$TOP/.ci/install-deps" >&2
mkdir -p "$WORK"/{ctx,registry}
cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln

if ! curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null; then
  cat >"$WORK/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: $REG
YML
  setsid docker-registry serve "$WORK/registry.yml" >"$WORK/registry/log" 2>&1 </dev/null &
  echo $! >"$WORK/registry/pid"
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://$REG/v2/" || { echo "setup: the registry did not start (see $WORK/registry/log)" >&2; exit 1; }
fi
# The base's root file system (builds.py also times its busybox alone, as big-layer's floor).
[ -s "$WORK/busybox.tar" ] || {
  bash "$TOP/testdata/make-busybox-rootfs.sh" "$WORK/busybox.tar.tmp" && mv "$WORK/busybox.tar.tmp" "$WORK/busybox.tar"
}
if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/bench/busybox/manifests/1"; then
  rm -rf "$WORK/base-store"
  "$KILN" --root "$WORK/base-store" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["sh"]' "$WORK/busybox.tar" "$BASE" >/dev/null
  "$KILN" --root "$WORK/base-store" push -q "$BASE" >/dev/null
fi

# Contexts: each case's Dockerfile, plus its generated files (made once; same bytes each time).
for c in small copy-many multistage big-layer; do
  mkdir -p "$WORK/ctx/$c"
  cp "$HERE/cases/$c/Dockerfile" "$WORK/ctx/$c/Dockerfile"
done
[ -f "$WORK/ctx/copy-many/.made" ] || {
  rm -rf "$WORK/ctx/copy-many/tree"
  python3 "$HERE/gen-tree.py" "$WORK/ctx/copy-many/tree" 20000 --ext .txt
  touch "$WORK/ctx/copy-many/.made"
}
[ -f "$WORK/ctx/multistage/.made" ] || {
  rm -rf "$WORK/ctx/multistage/src"
  python3 "$HERE/gen-tree.py" "$WORK/ctx/multistage/src" 200 --dirs 0 --ext .txt --seed 2
  touch "$WORK/ctx/multistage/.made"
}
for c in copy-many multistage; do echo .made >"$WORK/ctx/$c/.dockerignore"; done
echo "$WORK"
