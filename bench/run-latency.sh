#!/usr/bin/env bash
# Container start latency: `kiln run --rm busybox true` against `runc run` and `crun run` on
# the same busybox root filesystem (an OCI bundle) and `podman run --rm`, taken alternately
# (the order rotates each round), printing medians, min-max and kiln/peer ratios. Then the
# cost of one RUN step: a build of 21 `RUN true` steps against one of a single step
# (--no-cache), divided by 20.
#
# Every tool gets a new network namespace (kiln and podman with --network none; the runc/crun
# bundle from `runc spec`, which has one). crun 1.8.1 refuses hosts with cgroup v1 beside a
# cgroup2 mount, so it runs in a private mount namespace with that mount removed (the cost
# of which is timed too and printed as its own row).
#
#   bench/run-latency.sh            30 rounds
#   bench/run-latency.sh --quick    3 rounds (CI: proves the harness runs)
#   ROUNDS=50 BENCH_WORK=/tmp/x bench/run-latency.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}/latency
ROUNDS=${ROUNDS:-30}
if [ "${1:-}" = "--quick" ]; then ROUNDS=3; fi
[ "$(id -u)" = 0 ] || { echo "run-latency: runc, crun and podman are timed as root: run as root" >&2; exit 1; }
for t in runc crun podman python3 unshare; do command -v "$t" >/dev/null || { echo "run-latency: $t is missing (.ci/install-deps)" >&2; exit 1; }; done

cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln
rm -rf "$WORK"; mkdir -p "$WORK"
ROOT=$WORK/kiln-store

# One busybox root filesystem for everyone.
bash "$TOP/testdata/make-busybox-rootfs.sh" "$WORK/busybox.tar"
"$KILN" --root "$ROOT" import -c 'CMD ["sh"]' "$WORK/busybox.tar" busybox:latest >/dev/null
mkdir -p "$WORK/bundle/rootfs"
tar -C "$WORK/bundle/rootfs" -xf "$WORK/busybox.tar"
(cd "$WORK/bundle" && runc spec && python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
json.dump(c, open("config.json", "w"))
PY
)

# podman, in its own storage, with the same image.
export CONTAINERS_CONF=$HERE/conf/containers.conf
PODMAN="podman --root $WORK/podman/root --runroot $WORK/podman/run --storage-driver overlay"
"$KILN" --root "$ROOT" save -o "$WORK/busybox-archive.tar" busybox:latest
$PODMAN load -q -i "$WORK/busybox-archive.tar" >/dev/null
$PODMAN run --rm --network none busybox:latest true

CRUN_NS="unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec \"\$@\"' crun-ns"
# name<TAB>command, one case a line.
T=$'\t'
cat >"$WORK/cases.tsv" <<EOF
kiln run --rm --network none busybox true${T}$KILN --root $ROOT run --rm --network none busybox true
runc run (bundle)${T}runc run --bundle $WORK/bundle kiln-bench-lat
crun run (bundle, private mount ns)${T}$CRUN_NS crun run --bundle $WORK/bundle kiln-bench-lat
private mount ns alone (crun's workaround)${T}$CRUN_NS true
the command alone (/bin/true)${T}/bin/true
podman run --rm --network none busybox true${T}$PODMAN run --rm --network none busybox:latest true
EOF

# The RUN step: 1 and 21 steps of `RUN true`.
mkdir -p "$WORK/one" "$WORK/many"
printf 'FROM busybox:latest\nRUN true\n' >"$WORK/one/Dockerfile"
{ echo 'FROM busybox:latest'; for _ in $(seq 21); do echo 'RUN true'; done; } >"$WORK/many/Dockerfile"
cat >"$WORK/steps.tsv" <<EOF
build, 1 RUN step${T}$KILN --root $ROOT build -q --no-cache $WORK/one
build, 21 RUN steps${T}$KILN --root $ROOT build -q --no-cache $WORK/many
EOF

python3 - "$WORK" "$ROUNDS" <<'PY'
import shlex, statistics, subprocess, sys, tempfile, time
work, rounds = sys.argv[1], int(sys.argv[2])
peak = {}

def run(cmd):
    p = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {cmd}\n{p.stderr.decode()}")

def peak_kb(cmd):
    """The peak RSS (KB) of the largest process of cmd's tree, from an extra, untimed run
    under GNU time (whose own small fork is what the count starts from, not Python's)."""
    with tempfile.NamedTemporaryFile("r") as f:
        run(f"/usr/bin/time -f %M -o {f.name} sh -c {shlex.quote(cmd)}")
        return int(f.read().split()[-1])

def timed(cmd):
    """Wall seconds of one run (nothing wrapped around the command)."""
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t

def load(path):
    return dict(line.rstrip("\n").split("\t", 1) for line in open(path) if line.strip())

def measure(cases, rounds):
    names = list(cases)
    times = {n: [] for n in names}
    peak.update({n: [] for n in names})
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(timed(cases[n]))
    for n in names:
        peak[n].append(peak_kb(cases[n]))
    return times

def row(name, ts):
    rss = statistics.median(peak[name]) / 1024
    return f"| {name} | {statistics.median(ts) * 1000:.1f} | {min(ts) * 1000:.1f}-{max(ts) * 1000:.1f} | {rss:.1f} |"

lat = measure(load(f"{work}/cases.tsv"), rounds)
print(f"\ncontainer start, {rounds} rounds (ms)\n")
print("| case | median | min-max | peak RSS MB |\n|---|---|---|---|")
for n, ts in lat.items():
    print(row(n, ts))
k = statistics.median(lat["kiln run --rm --network none busybox true"])
for peer in ["crun run (bundle, private mount ns)", "runc run (bundle)", "podman run --rm --network none busybox true"]:
    print(f"kiln / {peer}: {k / statistics.median(lat[peer]):.2f}x")
crun_net = statistics.median(lat["crun run (bundle, private mount ns)"]) - statistics.median(lat["private mount ns alone (crun's workaround)"])
print(f"kiln / crun less its workaround's cost (an estimate of crun's own work): {k / crun_net:.2f}x")
print("target: <= 1.5x crun, or runc where crun cannot start as the host is (true here)")

steps = measure(load(f"{work}/steps.tsv"), max(3, rounds // 3))
print(f"\nRUN step cost, {max(3, rounds // 3)} rounds (ms)\n")
print("| case | median | min-max | peak RSS MB |\n|---|---|---|---|")
for n, ts in steps.items():
    print(row(n, ts))
per_step = (statistics.median(steps["build, 21 RUN steps"]) - statistics.median(steps["build, 1 RUN step"])) / 20
true_cost = statistics.median(lat["the command alone (/bin/true)"])
print(f"one RUN step (sandbox, commit, cache record): {per_step * 1000:.1f} ms, "
      f"{(per_step - true_cost) * 1000:.1f} ms above the command itself (target <= 15 ms)")
PY
