#!/usr/bin/env python3
"""Deterministic tree for benchmarks: N files (default 20,000) in D directories (default 100;
0 puts them all in the root), sizes spread from 0 to ~10 KB (about 100 MB for 20,000),
half-compressible content, every mtime 2000-01-01. The same arguments give the same bytes.

    gen-tree.py ROOT [N] [--dirs D] [--ext .dat] [--seed 1]
"""
import argparse
import os
import random

p = argparse.ArgumentParser()
p.add_argument("root")
p.add_argument("files", nargs="?", type=int, default=20000)
p.add_argument("--dirs", type=int, default=100)
p.add_argument("--ext", default=".dat")
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()
rng = random.Random(a.seed)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)]
mtime = 946684800
dirs = set()
for i in range(a.files):
    d = os.path.join(a.root, f"d{i % a.dirs:03d}") if a.dirs else a.root
    if d not in dirs:
        os.makedirs(d, exist_ok=True)
        dirs.add(d)
    size = rng.randint(0, 10000)
    half = size // 2
    text = b" ".join(rng.choice(words) for _ in range(half // 5 + 1))[:half]
    data = text + rng.randbytes(size - len(text))
    path = os.path.join(d, f"f{i:05d}{a.ext}")
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
for d in sorted(dirs, reverse=True) + [a.root]:
    os.utime(d, (mtime, mtime))
