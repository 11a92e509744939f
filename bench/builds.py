#!/usr/bin/env python3
"""Build benchmark: kiln against docker/BuildKit (a private dockerd, the fastest peer here)
and buildah (overlay, --layers, chroot isolation) on bench/cases, taken alternately.

A unit is a short sequence that must run in order in one store: a cold build after an
untimed reset to an empty store holding only the base image, then what follows it (an
unchanged rebuild; a rebuild after one file changed; a push and a pull of the image built).
Each round runs every unit for every tool, the tools' order rotating from round to round,
so the machine's drift hits them alike. Every timed command follows an untimed `sync` (as
in ../shared/bench's protocol: no tool pays for writing back what the reset before it left)
and runs under GNU time: wall seconds (measured here), the peak RSS of the command's largest
process and, for docker, the daemon's own peak (dockerd and its containerd, VmHWM reset
before each command).

The big-layer unit also times its floor each round, in turn with the tools: the RUN's own
command alone, on the host with the base image's busybox, plus one SHA-256 of the 1 GiB it
wrote (openssl, SHA-NI). Any builder does at least that (the command, then the layer's
diffID over the finished file), so the floor's ratio to BuildKit is about the best any
builder can reach in this run.

    builds.py [--rounds N] [--units small,copy-many,multistage,big-layer] [--tools kiln,buildkit,buildah]

Needs bench/setup.sh's work (its directory in BENCH_WORK/peers) and bench/dockerd.sh.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/kiln-bench")) / "peers"
REG, BIG_REG = "127.0.0.1:5000", "127.0.0.1:5001"
BASE = f"{REG}/bench/busybox:1"
KILN = TOP / "target/release/kiln"
DOCKER_DIR = WORK / "docker"
LOGS = WORK / "logs"   # each timed command's output, as NAME.TOOL.rROUND.log (the last run's)
ENV = dict(
    os.environ,
    DOCKER_HOST=f"unix://{DOCKER_DIR}/sock",
    DOCKER_BUILDKIT="1",
    CONTAINERS_CONF=str(HERE / "conf/containers.conf"),
    CONTAINERS_REGISTRIES_CONF=str(HERE / "conf/registries.conf"),
)


class Tool:
    """Command lines of one tool: reset to a store with only the base, build, push, pull."""

    def __init__(self, name, reset, build, push, pull_reset, pull, daemon=False):
        self.name, self.daemon = name, daemon
        self.reset, self.build, self.push = reset, build, push
        self.pull_reset, self.pull = pull_reset, pull


def tools():
    k = f"{KILN} --root {WORK}/kiln-store"
    k2 = f"{KILN} --root {WORK}/kiln-pulled"
    d = "/usr/bin/docker"
    bah = f"buildah --root {WORK}/buildah/root --runroot {WORK}/buildah/run --storage-driver overlay"
    return {
        "kiln": Tool(
            "kiln",
            reset=f"rm -rf {WORK}/kiln-store {WORK}/kiln-pulled && {k} pull -q {BASE}",
            build=k + " build -q -t {tag} {ctx}",
            push=k + " push -q {tag}",
            pull_reset=f"rm -rf {WORK}/kiln-pulled",
            pull=k2 + " pull -q {tag}",
        ),
        "buildkit": Tool(
            "buildkit",
            reset=f"{d} builder prune -af >/dev/null && ({d} image ls -qa | sort -u | xargs -r {d} image rm -f >/dev/null) && {d} pull -q {BASE}",
            build=d + " build -q --network none -t {tag} {ctx}",
            push=d + " push -q {tag}",
            pull_reset=d + " image rm -f {tag} >/dev/null && " + d + " builder prune -af >/dev/null",
            pull=d + " pull -q {tag}",
            daemon=True,
        ),
        "buildah": Tool(
            "buildah",
            reset=f"({bah} rm -a >/dev/null; {bah} rmi -af >/dev/null; true) && {bah} pull -q {BASE}",
            build=bah + " bud -q --layers --isolation chroot -t {tag} {ctx}",
            push=bah + " push -q --tls-verify=false {tag} docker://{tag}",
            pull_reset=bah + " rmi -f {tag} >/dev/null",
            pull=bah + " pull -q --tls-verify=false {tag}",
        ),
    }


def sh(cmd, check=True):
    r = subprocess.run(["bash", "-c", cmd], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        sys.exit(f"builds: failed ({r.returncode}): {cmd}\n{r.stdout[-2000:]}")
    return r


def daemon_pids():
    pids = []
    try:
        pids.append(int((DOCKER_DIR / "pid").read_text()))
    except (OSError, ValueError):
        return []
    out = subprocess.run(["pgrep", "-P", str(pids[0])], stdout=subprocess.PIPE, text=True).stdout
    return pids + [int(p) for p in out.split()]


def vmhwm_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def timed(cmd, daemon, log):
    """Runs cmd under GNU time: (wall s, peak RSS KB, daemon peak KB or None); its output
    goes to log."""
    pids = daemon_pids() if daemon else []
    for p in pids:
        Path(f"/proc/{p}/clear_refs").write_text("5")
    with tempfile.NamedTemporaryFile("r") as t:
        start = time.monotonic()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name, "bash", "-c", cmd], env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.monotonic() - start
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(r.stdout)
        if r.returncode != 0:
            sys.exit(f"builds: failed ({r.returncode}): {cmd}\n{r.stdout[-2000:]}")
        rss = int(t.read().split()[-1])
    hwm = max((vmhwm_kb(p) for p in pids), default=0) if pids else None
    return wall, rss, hwm


def reset_big_registry():
    """An empty registry on 127.0.0.1:5001 for each push (a 1 GiB image per tool and round)."""
    d = WORK / "big-registry"
    pidf = d / "pid"
    if pidf.exists():
        sh(f"kill $(cat {pidf}) 2>/dev/null; for i in $(seq 50); do kill -0 $(cat {pidf}) 2>/dev/null || break; sleep 0.1; done", check=False)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: {BIG_REG}\n")
    sh(f"setsid docker-registry serve {d}/config.yml >{d}/log 2>&1 </dev/null & echo $! >{pidf}; "
       f"for i in $(seq 100); do curl -fsS -o /dev/null http://{BIG_REG}/v2/ && exit 0; sleep 0.1; done; exit 1")


def mutate_one_file():
    """Gives one file of copy-many's tree new content of the same size class."""
    f = WORK / "ctx/copy-many/tree/d050/f10050.txt"
    f.write_bytes(os.urandom(2500).hex().encode() + f"\n{time.time_ns()}\n".encode())


# unit -> (context, [(step name, kind)]): kind is build, rebuild, mutate+build, push, pull.
UNITS = {
    "small": ("small", [("small", "build"), ("small-cached", "build")]),
    "copy-many": ("copy-many", [("copy-many", "build"), ("cached", "build"), ("rebuild-one-file", "mutate+build")]),
    "multistage": ("multistage", [("multistage", "build"), ("multistage-cached", "build")]),
    "big-layer": ("big-layer", [("big-layer", "build"), ("push-big", "push"), ("pull-big", "pull")]),
}


def run_unit(tool, unit, rnd, results):
    ctx, steps = UNITS[unit]
    sh(tool.reset)
    tag = f"{BIG_REG}/bench/{tool.name}-{unit}:{rnd}" if unit == "big-layer" else f"bench-{tool.name}-{unit}:{rnd}"
    for name, kind in steps:
        if kind == "mutate+build":
            mutate_one_file()
        if kind == "push":
            reset_big_registry()
            cmd = tool.push.format(tag=tag)
        elif kind == "pull":
            sh(tool.pull_reset.format(tag=tag))
            cmd = tool.pull.format(tag=tag)
        else:
            cmd = tool.build.format(tag=tag, ctx=WORK / "ctx" / ctx)
        sh("sync")
        wall, rss, hwm = timed(cmd, tool.daemon, LOGS / f"{name}.{tool.name}.r{rnd}.log")
        results.setdefault((name, tool.name), []).append((wall, rss, hwm))
        extra = f" daemon={hwm // 1024}MB" if hwm is not None else ""
        print(f"  r{rnd} {name:<18} {tool.name:<9} {wall:8.3f}s rss={rss // 1024}MB{extra}", flush=True)


def time_floor(rnd, results):
    """The big-layer floor: its command alone plus one SHA-256 of the file (see the top)."""
    busybox, out = WORK / "floor/busybox", WORK / "floor.bin"   # named busybox: it picks its applet by argv[0]
    if not busybox.exists():
        busybox.parent.mkdir(exist_ok=True)
        sh(f"tar -xOf {WORK}/busybox.tar ./bin/busybox >{busybox}.tmp && chmod 755 {busybox}.tmp && mv {busybox}.tmp {busybox}")
    sh("sync")
    try:
        start = time.monotonic()
        sh(f"{busybox} head -c 1073741824 /dev/urandom >{out}")
        command = time.monotonic() - start
        start = time.monotonic()
        sh(f"openssl dgst -sha256 {out} >/dev/null")
        digest = time.monotonic() - start
    finally:
        out.unlink(missing_ok=True)   # also when a step fails (sh exits): no 1 GiB left behind
    results.setdefault(("big-layer", "floor"), []).append((command + digest, 0, None))
    print(f"  r{rnd} big-layer          floor     {command + digest:8.3f}s (command {command:.3f}s + sha256 {digest:.3f}s)",
          flush=True)


def report(results, units, names):
    steps = [s for u in units for s, _ in UNITS[u][1]]
    print()
    print(f"{'step':<18} {'tool':<9} {'median s':>9} {'min-max':>15} {'rss MB':>7} {'daemon MB':>9} {'vs BuildKit':>11}")
    for s in steps:
        ref = results.get((s, "buildkit"))
        ref_med = statistics.median(w for w, _, _ in ref) if ref else None
        for t in names:
            runs = results.get((s, t))
            if not runs:
                continue
            walls = [w for w, _, _ in runs]
            med = statistics.median(walls)
            rss = statistics.median(r for _, r, _ in runs) // 1024
            hwms = [h for _, _, h in runs if h is not None]
            daemon = f"{statistics.median(hwms) // 1024}" if hwms else "-"
            ratio = f"{med / ref_med:.2f}x" if ref_med and t != "buildkit" else "-"
            rss = "-" if t == "floor" else rss
            print(f"{s:<18} {t:<9} {med:9.3f} {min(walls):7.3f}-{max(walls):<7.3f} {rss:>7} {daemon:>9} {ratio:>11}")
    print("(vs BuildKit: kiln's or buildah's median / BuildKit's median in this run; below 1 is faster)")
    if ("big-layer", "floor") in results:
        print("(floor: big-layer's command alone + one SHA-256 of its 1 GiB, the least any builder does)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--units", default="small,copy-many,multistage,big-layer")
    p.add_argument("--tools", default="kiln,buildkit,buildah")
    a = p.parse_args()
    units, names = a.units.split(","), a.tools.split(",")
    all_tools = tools()
    for n in names:
        if n not in all_tools:
            sys.exit(f"builds: unknown tool {n}")
    for u in units:
        if u not in UNITS:
            sys.exit(f"builds: unknown unit {u}")
    versions = {"kiln": f"{KILN} --version", "buildkit": "/usr/bin/docker version -f 'docker {{.Server.Version}}'",
                "buildah": "buildah --version"}
    for n in names:
        print(f"{n}: {sh(versions[n]).stdout.strip()}")
    print(f"rounds: {a.rounds}; units: {','.join(units)}; order rotates each round")
    results = {}
    # big-layer's floor takes its turn among the tools, so that it meets the machine as they do.
    turns = names + ["floor"] if "big-layer" in units else names
    for rnd in range(1, a.rounds + 1):
        order = turns[(rnd - 1) % len(turns):] + turns[:(rnd - 1) % len(turns)]
        for u in units:
            for n in order:
                if n != "floor":
                    run_unit(all_tools[n], u, rnd, results)
                elif u == "big-layer":
                    time_floor(rnd, results)
    report(results, units, turns)


if __name__ == "__main__":
    main()
