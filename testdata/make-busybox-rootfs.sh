#!/usr/bin/env bash
# Writes a minimal busybox root filesystem tarball (uncompressed) to $1, or to stdout.
# Needs Debian's busybox-static; no network. The output is byte-for-byte reproducible
# for a given busybox binary (sorted entries, fixed mtimes, numeric root ownership).
set -euo pipefail
BUSYBOX=${BUSYBOX:-/bin/busybox}
if [ ! -x "$BUSYBOX" ] || ! "$BUSYBOX" --list >/dev/null 2>&1; then
  echo "make-busybox-rootfs: $BUSYBOX missing: apt-get install busybox-static" >&2
  exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "make-busybox-rootfs: $BUSYBOX is dynamically linked; install busybox-static" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r=$work/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,home,proc,sys,dev,run}
chmod 1777 "$r/tmp" "$r/var/tmp"
chmod 700 "$r/root"
cp "$BUSYBOX" "$r/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  [ -e "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done
cat >"$r/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$r/etc/group" <<'GR'
root:x:0:
daemon:x:1:
nogroup:x:65534:
GR
echo "127.0.0.1 localhost" >"$r/etc/hosts"
out=${1:--}
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$r" -cf "$out" .
