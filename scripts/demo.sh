#!/usr/bin/env bash
# The main job: sets up, builds, starts a local sherd cluster (2 shard
# servers by default) and trains an MLP through it, one trainer per server on
# its own data shard; shows `sherdctl status`, then shuts everything down.
#
#   scripts/demo.sh [--world-size W] [--steps N] [extra train_mlp flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

WORLD=2
STEPS=300
EXTRA=()
while (($#)); do
  case "$1" in
    --world-size) WORLD="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target sherd-server sherdctl train_mlp

RUN=$(mktemp -d /tmp/sherd-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT

echo "== starting $WORLD shard server(s)"
ADDRS=()
start_server() {  # rank [extra flags]
  local r=$1; shift
  # train_mlp is a CPU trainer: the state stays in host shared memory.
  build/server/sherd-server --device cpu --listen 127.0.0.1:0 --rank "$r" --world-size "$WORLD" \
    --address-file "$RUN/addr.$r" "$@" 2>"$RUN/server.$r.log" &
  PIDS+=($!)
  for _ in $(seq 200); do [[ -s "$RUN/addr.$r" ]] && break; sleep 0.05; done
  [[ -s "$RUN/addr.$r" ]] || { echo "server $r did not start:"; cat "$RUN/server.$r.log"; exit 1; }
  ADDRS+=("$(cat "$RUN/addr.$r")")
}
# Rank 0 first (it coordinates), then the others pointed at it.
start_server 0
for ((r = 1; r < WORLD; r++)); do start_server "$r" --coordinator "${ADDRS[0]}"; done
echo "   ${ADDRS[*]}"

echo "== training for $STEPS steps"
TPIDS=()
for ((r = 0; r < WORLD; r++)); do
  OPENBLAS_NUM_THREADS=1 build/examples/train_mlp --server "${ADDRS[$r]}" \
    --steps "$STEPS" ${EXTRA[@]+"${EXTRA[@]}"} &
  TPIDS+=($!)
done
rc=0
for p in "${TPIDS[@]}"; do wait "$p" || rc=$?; done

echo "== sherdctl status"
build/client/sherdctl/sherdctl --server "${ADDRS[0]}" status
echo "== sherdctl where fc2.weight"
build/client/sherdctl/sherdctl --server "${ADDRS[0]}" where fc2.weight

echo "== stopping"
cleanup
trap - EXIT
for ((r = 0; r < WORLD; r++)); do tail -n 2 "$RUN/server.$r.log" 2>/dev/null || true; done
exit $rc
