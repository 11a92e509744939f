#!/usr/bin/env python3
"""Writes the malicious layer corpus: crafted tars that try to escape the directory a layer
is unpacked into. cases.txt lists, for each, what kiln must do: `refuse` (an error) or
`contain` (unpack, but nothing outside the target). Regenerate with `python3 make.py`;
the outputs are committed so the corpus does not depend on Python's tarfile version."""
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = []


def write(name, expect, what, entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            info, data = e
            info.mtime = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    with open(os.path.join(HERE, name + ".tar"), "wb") as f:
        f.write(buf.getvalue())
    CASES.append((name, expect, what))


def reg(path, data=b"pwned\n", mode=0o644, pax=None):
    i = tarfile.TarInfo(path)
    i.size = len(data)
    i.mode = mode
    if pax:
        i.pax_headers = pax
    return (i, data)


def sym(path, target):
    i = tarfile.TarInfo(path)
    i.type = tarfile.SYMTYPE
    i.linkname = target
    return (i, None)


def hard(path, target):
    i = tarfile.TarInfo(path)
    i.type = tarfile.LNKTYPE
    i.linkname = target
    return (i, None)


def dirent(path, mode=0o755):
    i = tarfile.TarInfo(path)
    i.type = tarfile.DIRTYPE
    i.mode = mode
    return (i, None)


def dev(path, major, minor):
    i = tarfile.TarInfo(path)
    i.type = tarfile.CHRTYPE
    i.devmajor, i.devminor = major, minor
    i.mode = 0o600
    return (i, None)


write("dotdot", "refuse", "a name with ../ at the top", [reg("../escape.txt")])
write("dotdot-deep", "refuse", "a name that climbs out through a subdirectory", [dirent("a/"), reg("a/../../escape.txt")])
write("dotdot-longname", "refuse", "a long (PAX) name made of ../", [reg("../" * 60 + "escape.txt")])
write("dotdot-gnu-longname", "refuse", "a GNU long name made of ../", [reg("../" * 60 + "escape.txt")], fmt=tarfile.GNU_FORMAT)
write("absolute", "contain", "an absolute name lands inside the target", [reg("/abs-escape.txt")])
write("symlink-write-through", "refuse", "a symlink to the outside, then a file written through it", [sym("link", "../outside"), reg("link/pwned")])
write("symlink-abs-write-through", "refuse", "a symlink to /tmp, then a file written through it", [sym("link", "/tmp"), reg("link/kiln-malicious-layer-pwned")])
write("hardlink-outside", "refuse", "a hard link to a file outside the target", [hard("hl", "../outside/secret")])
write("hardlink-absolute", "refuse", "a hard link to /etc/passwd", [hard("hl", "/etc/passwd")])
write("hardlink-through-symlink", "refuse", "a hard link whose target path goes through a symlink to the outside", [sym("s", "../outside"), hard("hl", "s/secret")])
write("whiteout-dotdot", "refuse", "whiteouts named .wh.. and .wh...", [dirent("a/"), reg("a/.wh...", b"")])
write("whiteout-escape", "refuse", "a whiteout whose directory climbs out", [reg("../outside/.wh.secret", b"")])
write("whiteout-through-symlink", "refuse", "a whiteout inside a symlink to the outside", [sym("s", "../outside"), reg("s/.wh.secret", b"")])
write("opaque-through-symlink", "refuse", "an opaque marker inside a symlink to the outside", [sym("s", "../outside"), reg("s/.wh..wh..opq", b"")])
write("symlink-loop", "refuse", "a symlink loop, then a file written through it", [sym("a", "b"), sym("b", "a"), reg("a/x")])
write("dir-replaced-by-symlink", "refuse", "a directory, then a symlink to the outside with the same name, then a file under it", [dirent("d/"), sym("d", "../outside"), reg("d/x")])
write("duplicate-entries", "contain", "the same file twice; the last one wins", [reg("f", b"first\n"), reg("f", b"second\n")])
write("overlay-xattr", "contain", "an overlay xattr that must not reach the snapshot", [reg("f", b"x", pax={"SCHILY.xattr.trusted.overlay.redirect": "/../../outside"})])
write("setuid", "contain", "a setuid file stays inside", [reg("bin/su", b"#!/bin/sh\n", mode=0o4755)])
write("device-node", "contain", "a device node (created only where permitted, and only inside)", [dirent("dev/"), dev("dev/mem", 1, 1)])

# An oversized header: a PAX size far beyond the data that follows.
hdr = tarfile.TarInfo("huge")
hdr.size = 0
hdr.pax_headers = {"size": str(1 << 40)}
b = io.BytesIO()
with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
    t.addfile(hdr, io.BytesIO(b""))
raw = b.getvalue()
with open(os.path.join(HERE, "oversized-header.tar"), "wb") as f:
    f.write(raw[: len(raw) - 1024])
CASES.append(("oversized-header", "refuse", "a PAX header claims a 1 TiB entry that is not there"))

with open(os.path.join(HERE, "cases.txt"), "w") as f:
    f.write("# name | refuse or contain | what it tries\n")
    for name, expect, what in CASES:
        f.write(f"{name} | {expect} | {what}\n")
