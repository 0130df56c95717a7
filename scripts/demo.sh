#!/usr/bin/env bash
# The main job: sets up, builds, and trains a small GPT (~10.8M parameters, on
# the bytes of Python's standard library) through sherd: torchrun starts W
# trainers, each with its own embedded shard server, and sherd's AdamW keeps
# the fp32 master params and Adam moments sharded across the servers. Rank 0
# logs loss, tokens/s and the step-time split, compares the validation loss
# before and after, and shows `sherdctl status` (examples/python/train_gpt.py).
#
#   scripts/demo.sh [--world-size W] [--steps N] [train_gpt.py flags...]
#       (default W=2, N=120; see `.venv/bin/python examples/python/train_gpt.py --help`)
#   scripts/demo.sh --mlp [--world-size W] [--steps N] [train_mlp flags...]
#       the C++ example instead: W sherd-server processes and build/examples/train_mlp
set -euo pipefail
cd "$(dirname "$0")/.."

WORLD=2
STEPS=""
MLP=0
EXTRA=()
while (($#)); do
  case "$1" in
    --world-size) WORLD="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --mlp) MLP=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

bash scripts/setup.sh
bash scripts/build.sh

if ((!MLP)); then
  echo "== training a small GPT through sherd: $WORLD trainer(s) under torchrun"
  OMP_NUM_THREADS=1 exec .venv/bin/torchrun --standalone --nproc-per-node "$WORLD" \
    examples/python/train_gpt.py ${STEPS:+--steps "$STEPS"} ${EXTRA[@]+"${EXTRA[@]}"}
fi

# --mlp: the C++ trainer, against sherd-server processes started here.
STEPS=${STEPS:-300}
SERVER=.venv/bin/sherd-server
[[ -x $SERVER ]] || SERVER=build/server/sherd-server
SHERDCTL=.venv/bin/sherdctl
[[ -x $SHERDCTL ]] || SHERDCTL=build/client/sherdctl/sherdctl
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
  "$SERVER" --device cpu --listen 127.0.0.1:0 --rank "$r" --world-size "$WORLD" \
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
"$SHERDCTL" --server "${ADDRS[0]}" status
echo "== sherdctl where fc2.weight"
"$SHERDCTL" --server "${ADDRS[0]}" where fc2.weight

echo "== stopping"
cleanup
trap - EXIT
for ((r = 0; r < WORLD; r++)); do tail -n 2 "$RUN/server.$r.log" 2>/dev/null || true; done
exit $rc
