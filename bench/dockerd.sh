#!/usr/bin/env bash
# A private dockerd for the benchmarks (docker/BuildKit as a peer): its own data, exec root
# and socket under $BENCH_WORK/peers/docker, no bridge and no iptables rules (this host's
# containers run with --network none), overlay2.
#
#   bench/dockerd.sh start|stop|status     clients: DOCKER_HOST=unix://$BENCH_WORK/peers/docker/sock
set -euo pipefail
D=${BENCH_WORK:-/tmp/kiln-bench}/peers/docker
PIDFILE=$D/pid
export DOCKER_HOST=unix://$D/sock
alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { /usr/bin/docker version >/dev/null 2>&1; }
case "${1:-status}" in
  start)
    if alive && answers; then exit 0; fi
    mkdir -p "$D/data" "$D/exec"
    setsid dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$PIDFILE" -H "$DOCKER_HOST" \
      --bridge=none --iptables=false --ip6tables=false --storage-driver overlay2 \
      >"$D/log" 2>&1 </dev/null &
    for _ in $(seq 1 300); do answers && exit 0; sleep 0.1; done
    echo "dockerd.sh: dockerd did not answer; see $D/log" >&2; tail -5 "$D/log" >&2; exit 1 ;;
  stop)
    if alive; then
      pid=$(cat "$PIDFILE"); kill "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi ;;
  status) alive && answers ;;
  *) echo "usage: bench/dockerd.sh start|stop|status" >&2; exit 2 ;;
esac
