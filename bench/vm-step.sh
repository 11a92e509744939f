#!/usr/bin/env bash
# MicroVM step overhead (--isolation vm, qemu -M microvm; TCG on hosts without hardware KVM):
# `kiln run --rm --isolation vm busybox true` (boot, run `true`, collect the changes as a
# layer, tear down) against the floor of the same VMM and kernel: qemu booting a busybox
# initramfs whose /init runs `true` and powers off. Then a RUN step's cost in a build: 3
# `RUN true` steps against 1 (--no-cache), halved. Taken alternately; medians, min-max and
# kiln/floor ratios. Target: <= 2.5 s per step with qemu/TCG here (<= 150 ms on hardware KVM,
# where `--vmm auto`, which these cases use, takes the builtin VMM; the floor stays qemu/TCG).
# And the builtin VMM's start: the kiln process from exec to a one-instruction guest's write
# to the exit port (target <= 10 ms), beside kiln's own start (`kiln --version`).
#
#   bench/vm-step.sh            8 rounds
#   bench/vm-step.sh --quick    1 round (CI: proves the harness runs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
WORK=${BENCH_WORK:-/tmp/kiln-bench}/vm-step
ROUNDS=${ROUNDS:-8}
if [ "${1:-}" = "--quick" ]; then ROUNDS=1; fi
for t in qemu-system-x86_64 cpio python3 busybox; do command -v "$t" >/dev/null || { echo "vm-step: $t is missing (.ci/install-deps)" >&2; exit 1; }; done
KERNEL=${KILN_VM_KERNEL:-$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1)}
[ -n "$KERNEL" ] || { echo "vm-step: no guest kernel (apt-get install linux-image-cloud-amd64)" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$TOP/Cargo.toml" -p cli
KILN=$TOP/target/release/kiln
rm -rf "$WORK"; mkdir -p "$WORK"
ROOT=$WORK/kiln-store
bash "$TOP/testdata/make-busybox-rootfs.sh" "$WORK/busybox.tar"
"$KILN" --root "$ROOT" import -c 'CMD ["sh"]' "$WORK/busybox.tar" busybox:latest >/dev/null

# The floor: the same kernel and VMM options, a busybox /init that runs `true`, powers off.
mkdir -p "$WORK/floor/bin" "$WORK/floor/proc" "$WORK/floor/dev"
cp "$(command -v busybox)" "$WORK/floor/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox true\n/bin/busybox poweroff -f\n' >"$WORK/floor/init"
chmod +x "$WORK/floor/init"
(cd "$WORK/floor" && find . | cpio -o -H newc --quiet) >"$WORK/floor.cpio"
# kiln boots the vmlinux inside the bzImage (extracted once into its cache) with the host's
# TSC rate on the command line; the floor gets the same kernel file and command line.
"$KILN" --root "$ROOT" run --rm --isolation vm busybox true </dev/null
FLOOR_KERNEL=$(ls "$ROOT"/vm/initramfs/vmlinux-* 2>/dev/null | head -1)
FLOOR_KERNEL=${FLOOR_KERNEL:-$KERNEL}
KHZ=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000 + 0.5; exit}' /proc/cpuinfo)
FLOOR="qemu-system-x86_64 -M microvm,accel=tcg,rtc=on -cpu max -smp 1 -m 1024M -nodefaults -no-user-config -display none -no-reboot -serial stdio -kernel $FLOOR_KERNEL -initrd $WORK/floor.cpio -append 'console=ttyS0 quiet loglevel=1 panic=-1 reboot=t nokaslr tsc=reliable tsc_early_khz=$KHZ' </dev/null"

mkdir -p "$WORK/one" "$WORK/three"
printf 'FROM busybox:latest\nRUN true\n' >"$WORK/one/Dockerfile"
printf 'FROM busybox:latest\nRUN true\nRUN true\nRUN true\n' >"$WORK/three/Dockerfile"
T=$'\t'
cat >"$WORK/cases.tsv" <<CASES
kiln run --rm --isolation vm busybox true${T}$KILN --root $ROOT run --rm --isolation vm busybox true
qemu microvm boot to a busybox init and power-off (the floor)${T}$FLOOR
kiln run --rm busybox true (container, for scale)${T}$KILN --root $ROOT run --rm --network none busybox true
build, 1 RUN step, --isolation vm${T}$KILN --root $ROOT build -q --no-cache --isolation vm $WORK/one
build, 3 RUN steps, --isolation vm${T}$KILN --root $ROOT build -q --no-cache --isolation vm $WORK/three
builtin VMM: kiln process start to a guest's first instruction${T}$KILN __kiln-vmm-probe
kiln --version (process start alone)${T}$KILN --version
CASES

# Whether --vmm auto takes the builtin VMM here: VMX or SVM, and not PVM.
HW=no
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then HW=yes; fi
python3 - "$WORK" "$ROUNDS" "$HW" <<'PY'
import shlex, statistics, subprocess, sys, tempfile, time
work, rounds = sys.argv[1], int(sys.argv[2])

def run(cmd):
    p = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {cmd}\n{p.stderr.decode()}")
cases = dict(l.rstrip("\n").split("\t", 1) for l in open(f"{work}/cases.tsv") if l.strip())
names = list(cases)
times = {n: [] for n in names}
peak = {n: [] for n in names}
for r in range(rounds):
    for n in names[r % len(names):] + names[:r % len(names)]:
        t = time.perf_counter()
        run(cases[n])
        times[n].append(time.perf_counter() - t)
# The peak RSS of the largest process of each command's tree (qemu's, for a VM), from one
# extra, untimed run under GNU time (whose small fork the count starts from, not Python's).
for n in names:
    with tempfile.NamedTemporaryFile("r") as f:
        run(f"/usr/bin/time -f %M -o {f.name} sh -c {shlex.quote(cases[n])}")
        peak[n].append(int(f.read().split()[-1]))
med = {n: statistics.median(ts) for n, ts in times.items()}
print(f"\nmicroVM step, {rounds} rounds (ms)\n")
print("| case | median | min-max | peak RSS MB |\n|---|---|---|---|")
for n, ts in times.items():
    rss = statistics.median(peak[n]) / 1024
    print(f"| {n} | {med[n] * 1000:.1f} | {min(ts) * 1000:.1f}-{max(ts) * 1000:.1f} | {rss:.1f} |")
k = med["kiln run --rm --isolation vm busybox true"]
floor = med["qemu microvm boot to a busybox init and power-off (the floor)"]
step = (med["build, 3 RUN steps, --isolation vm"] - med["build, 1 RUN step, --isolation vm"]) / 2
print(f"kiln run --isolation vm / the floor: {k / floor:.2f}x ({(k - floor) * 1000:.0f} ms above it)")
print(f"one RUN step in a microVM: {step * 1000:.0f} ms (target <= 2500 ms with qemu/TCG)")
probe = med["builtin VMM: kiln process start to a guest's first instruction"]
print(f"builtin VMM, process start to the guest's first instruction: {probe * 1000:.1f} ms "
      f"({(probe - med['kiln --version (process start alone)']) * 1000:.1f} ms above kiln's own start; target <= 10 ms)")
if sys.argv[3] == "yes":
    print("builtin VMM booting Linux: the kiln cases above ran it (--vmm auto takes it on hardware virtualization)")
else:
    print("builtin VMM booting Linux: not timed here (it needs VMX/SVM; this host's /dev/kvm is not), so the kiln cases above ran qemu; tests/tests/microvm_builtin.rs boots it in a nested machine")
PY
