#!/usr/bin/env python3
"""Deterministic tree for benchmarks: N files (default 20,000) in 100 directories, sizes
spread from 0 to ~10 KB (about 100 MB for 20,000), half-compressible content."""
import os
import random
import sys

root = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
rng = random.Random(1)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)]
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    size = rng.randint(0, 10000)
    half = size // 2
    text = b" ".join(rng.choice(words) for _ in range(half // 5 + 1))[:half]
    data = text + rng.randbytes(size - len(text))
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(data)
