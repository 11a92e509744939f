#!/usr/bin/env bash
# The raw limits of this machine on the benchmarks' data: what the plain tools take for the
# work a layer or a build of it cannot avoid (writing 1 GiB of random data, reading and
# hashing it, compressing it with pigz and zstd -T0, tarring and hashing the 20,000-file
# tree, creating that tree with cp -a, statting it), with each command's peak RSS. The
# operations alternate within each round. Copies made by cp -a are removed only at the end
# (this ext4 has no journal: creating many files right after deleting many is slow).
#
#   bench/raw-limits.sh            1 GiB file and the 20,000-file tree, 3 rounds
#   bench/raw-limits.sh --quick    64 MiB and 2,000 files, 1 round (CI)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}
ROUNDS=${ROUNDS:-3}
BIG_BYTES=$((1 << 30))
TREE_FILES=20000
if [ "${1:-}" = "--quick" ]; then ROUNDS=1; BIG_BYTES=$((64 << 20)); TREE_FILES=2000; fi
for t in pigz zstd sha256sum tar python3; do command -v "$t" >/dev/null || { echo "raw-limits: $t is missing (.ci/install-deps)" >&2; exit 1; }; done
data=$WORK/layer-data
"$HERE/make-data.sh" "$data" "$BIG_BYTES" "$TREE_FILES"
scratch=$WORK/raw-limits
rm -rf "$scratch"; mkdir -p "$scratch"
big=$data/big/big.bin tree=$data/tree
mib=$((BIG_BYTES >> 20))
T=$'\t'
cat >"$scratch/cases.tsv" <<CASES
write ${mib} MiB from /dev/urandom (head -c)${T}head -c $BIG_BYTES /dev/urandom >$scratch/written.bin
sha256sum of the ${mib} MiB file${T}sha256sum $big
pigz -6 of the ${mib} MiB file${T}pigz -6 -c $big >/dev/null
zstd -T0 -3 of the ${mib} MiB file${T}zstd -T0 -3 -q -c $big >/dev/null
tar into sha256sum, the ${TREE_FILES}-file tree${T}tar -C $tree -cf - . | sha256sum
tar into pigz -6, the tree${T}tar -C $tree -cf - . | pigz -6 >/dev/null
tar into zstd -T0 -3, the tree${T}tar -C $tree -cf - . | zstd -T0 -3 -q >/dev/null
cp -a of the tree (creating ${TREE_FILES} files)${T}cp -a $tree $scratch/copy-\$ROUND
stat every file of the tree (find -printf)${T}find $tree -printf '%s\n' >/dev/null
CASES
python3 - "$scratch" "$ROUNDS" <<'PY'
import os, shlex, statistics, subprocess, sys, tempfile, time
scratch, rounds = sys.argv[1], int(sys.argv[2])
cases = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{scratch}/cases.tsv") if l.strip())
names = list(cases)
times = {n: [] for n in names}
peak = {n: [] for n in names}
for r in range(rounds):
    for n in names[r % len(names):] + names[:r % len(names)]:
        with tempfile.NamedTemporaryFile("r") as f:
            cmd = f"/usr/bin/time -f %M -o {f.name} bash -c {shlex.quote(cases[n])}"
            t = time.perf_counter()
            p = subprocess.run(cmd, shell=True, env=dict(os.environ, ROUND=str(r)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            times[n].append(time.perf_counter() - t)
            if p.returncode != 0:
                sys.exit(f"failed ({p.returncode}): {cases[n]}\n{p.stderr.decode()}")
            peak[n].append(int(f.read().split()[-1]))
print(f"raw limits, {rounds} round(s), operations alternating (s; peak RSS of the largest process)\n")
print("| operation | median s | min-max | peak RSS MB |\n|---|---|---|---|")
for n in names:
    ts = times[n]
    print(f"| {n} | {statistics.median(ts):.3f} | {min(ts):.3f}-{max(ts):.3f} | {statistics.median(peak[n]) / 1024:.1f} |")
PY
rm -rf "$scratch"
