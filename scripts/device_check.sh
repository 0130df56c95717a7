#!/usr/bin/env bash
# The GPU check, in two halves (docs/gpu.md):
#
#   scripts/device_check.sh [pack]        on a development machine: builds the
#       CUDA tests and the GPU benchmark (Release, sm_90), strips them and
#       packs them with the Debian shared libraries they need into .device/
#       (ignored through .git/info/exclude), with gpu_anchor.py beside them.
#   scripts/device_check.sh run [OUTDIR]  on the GPU machine (carry .device):
#       runs the CUDA tests (gtest XML + logs), the GPU benchmark and the
#       torch anchor, and writes everything to OUTDIR (default: $OUT, else
#       ./device-out). Exits non-zero if a test failed.
#
# Environment for pack: BUILD_DIR (default build-device), JOBS (default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACK="$ROOT/.device"
TESTS=(cuda_kernels_test cuda_ipc_test nccl_collective_test gpu_server_test)
BENCH=gpu_adamw_bench
SERVER=sherd-server  # gpu_server_test starts it (SHERD_SERVER_BIN)
MAX_PACK_MIB=56
# glibc, the GCC runtime, and what the GPU machine has its own (matching its
# driver): never packed.
EXCLUDE='^(linux-vdso|ld-linux|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libcuda|libcudart|libnccl)\.so'

pack() {
  local build="${BUILD_DIR:-$ROOT/build-device}"
  cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DSHERD_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build "$build" -j"${JOBS:-2}" --target "${TESTS[@]}" "$BENCH" "$SERVER"

  rm -rf "$PACK"
  mkdir -p "$PACK/bin" "$PACK/lib"
  local b path
  for b in "${TESTS[@]}" "$BENCH" "$SERVER"; do
    path=$(find "$build" -type f -name "$b" -perm -u+x | head -n 1)
    [[ -n "$path" ]] || { echo "device_check: $b was not built" >&2; exit 1; }
    cp "$path" "$PACK/bin/$b"
    strip --strip-unneeded "$PACK/bin/$b"
  done
  # ldd lists the whole closure; copy each library under its soname.
  local name lib
  for b in "$PACK"/bin/*; do
    if ldd "$b" | grep -q 'not found'; then
      echo "device_check: unresolved libraries in $b:" >&2
      ldd "$b" | grep 'not found' >&2
      exit 1
    fi
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
      while read -r name lib; do
        [[ "$name" =~ $EXCLUDE ]] && continue
        [[ -e "$PACK/lib/$name" ]] || cp -L "$lib" "$PACK/lib/$name"
      done
  done
  strip --strip-unneeded "$PACK"/lib/* 2>/dev/null || true

  cp "$ROOT/bench/gpu/step_anchor.py" "$ROOT/bench/gpu/report.py" "$PACK/"
  local anchor="$ROOT/../shared/anchors/gpu_anchor.py"
  if [[ -f "$anchor" ]]; then
    cp "$anchor" "$PACK/gpu_anchor.py"
  else
    echo "device_check: $anchor not found; the run will have no anchor" >&2
  fi
  {
    echo "packed: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "nvcc: $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -n 1)"
    echo "files:"
    (cd "$PACK" && find . -type f -printf '  %p %s\n' | sort)
  } > "$PACK/MANIFEST"

  # Keep the bundle out of git without touching .gitignore.
  local exclude
  exclude=$(git -C "$ROOT" rev-parse --git-path info/exclude 2>/dev/null || true)
  if [[ -n "$exclude" ]]; then
    [[ "$exclude" = /* ]] || exclude="$ROOT/$exclude"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
  fi

  local mib
  mib=$(( ($(du -sb "$PACK" | cut -f1) + 1048575) / 1048576 ))
  cat "$PACK/MANIFEST"
  echo "device_check: packed ${mib} MiB into $PACK"
  if (( mib > MAX_PACK_MIB )); then
    echo "device_check: bundle over ${MAX_PACK_MIB} MiB (64 MiB may travel)" >&2
    exit 1
  fi
  echo "next: run with the device tool, carry [\".device\"], command: bash scripts/device_check.sh run"
}

# Runs one step under a time limit; records "name rc seconds" in summary.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  # To the script's own stdout (fd 3), never into the step's redirected
  # output (a benchmark's JSON).
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUTDIR/summary.txt" >&3
  return $rc
}

run() {
  OUTDIR="${1:-${OUT:-$ROOT/device-out}}"
  mkdir -p "$OUTDIR"
  OUTDIR=$(cd "$OUTDIR" && pwd)
  exec 3>&1
  if [[ ! -d "$PACK/bin" ]]; then
    echo "device_check: no $PACK/bin; pack on a dev machine and carry .device" >&2
    exit 2
  fi
  chmod u+x "$PACK"/bin/* 2>/dev/null || true
  local orig_ld="${LD_LIBRARY_PATH-}"
  export LD_LIBRARY_PATH="$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  : > "$OUTDIR/summary.txt"
  {
    date -u
    uname -a
    nvidia-smi 2>&1 || echo "nvidia-smi unavailable"
    cat "$PACK/MANIFEST"
  } > "$OUTDIR/env.txt"

  local failed=0 t
  # NCCL at world size 1 needs no network but still bootstraps over a
  # socket; loopback is always there.
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-lo}" NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  # Limits keep the worst case (everything hanging) near 6.5 minutes; a
  # healthy run takes one to two. The NCCL creation timeout test aborts a
  # communicator mid-init; it runs on its own so that, should the abort
  # hang, only its own result is lost.
  export SHERD_SERVER_BIN="$PACK/bin/$SERVER"
  local -a runs=(
    "cuda_kernels_test cuda_kernels_test 60"
    "cuda_ipc_test cuda_ipc_test 30"
    "nccl_collective_test nccl_collective_test 40 -*PeerNeverJoins*"
    "nccl_init_timeout nccl_collective_test 40 *PeerNeverJoins*"
    "gpu_server_test gpu_server_test 45"
  )
  local r name bin limit filter
  for r in "${runs[@]}"; do
    read -r name bin limit filter <<< "$r"
    step "$name" "$limit" "$PACK/bin/$bin" --gtest_output="xml:$OUTDIR/$name.xml" \
      ${filter:+--gtest_filter="$filter"} > "$OUTDIR/$name.log" 2>&1 || failed=1
    grep -E '^\[ +(PASSED|SKIPPED) +\] [0-9]+ tests?|^\[ +FAILED +\]' \
      "$OUTDIR/$name.log" || true
  done
  # On a machine with a GPU a skipped CUDA test means the tests did not
  # reach it (driver, visibility): that is a failure, not a green run.
  if nvidia-smi -L >/dev/null 2>&1 &&
     grep -l '^\[  SKIPPED \]' "$OUTDIR"/*.log >/dev/null 2>&1; then
    echo "device_check: CUDA tests SKIPPED although nvidia-smi sees a GPU:" |
      tee -a "$OUTDIR/summary.txt"
    grep -h -A1 '^\[ RUN' "$OUTDIR"/*.log | grep -i 'skip' | head -n 5 |
      tee -a "$OUTDIR/summary.txt" || true
    failed=1
  fi
  step "$BENCH" 60 "$PACK/bin/$BENCH" > "$OUTDIR/$BENCH.json" \
    2> "$OUTDIR/$BENCH.log" || true
  cat "$OUTDIR/$BENCH.json"
  if [[ -f "$PACK/gpu_anchor.py" ]] && command -v python3 >/dev/null; then
    # The anchor runs in the machine's own environment (its torch).
    (cd "$OUTDIR" && export OUT="$OUTDIR" LD_LIBRARY_PATH="$orig_ld" &&
      step gpu_anchor 120 python3 "$PACK/gpu_anchor.py" \
        > "$OUTDIR/gpu_anchor.log" 2>&1) || true
    cat "$OUTDIR/gpu_anchor.json" 2>/dev/null || tail -n 5 "$OUTDIR/gpu_anchor.log"
  else
    echo "gpu_anchor skipped (no script or no python3)" | tee -a "$OUTDIR/summary.txt"
  fi
  if command -v python3 >/dev/null; then
    # torch's whole-step sequence and one-flat-tensor AdamW (our own anchor).
    (cd "$OUTDIR" && export OUT="$OUTDIR" LD_LIBRARY_PATH="$orig_ld" &&
      step step_anchor 90 python3 "$PACK/step_anchor.py" \
        > "$OUTDIR/step_anchor.log" 2>&1) || true
    # The ratios, as a markdown table for bench/RESULTS.md.
    python3 "$PACK/report.py" "$OUTDIR" | tee "$OUTDIR/report.md" || true
  fi
  echo "--- summary ($OUTDIR)"
  cat "$OUTDIR/summary.txt"
  return $failed
}

case "${1:-pack}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 [pack] | run [OUTDIR]" >&2; exit 2 ;;
esac
