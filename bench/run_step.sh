#!/usr/bin/env bash
# The step benchmark and its anchor in one command, so the ratio comes from
# one machine state (../shared/BENCHMARKS.md): sherd's end-to-end step at W
# ranks against torch ZeRO-1 over gloo (all_reduce + ZeroRedundancyOptimizer
# AdamW step) from the newest torch in .venv (scripts/setup.sh --bench).
#
#   bench/run_step.sh [params] [world]     (defaults: 32 Mi, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-33554432}
W=${2:-2}
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=/usr/bin/python3
ANCHORS=${SHERD_ANCHORS:-../shared/anchors}
sherd=$(build/bench/step_bench --params "$N" --world "$W" --steps 10 --json)
anchor=$(OMP_NUM_THREADS=1 "$PY" "$ANCHORS/cpu_anchor.py" "$N" "$W" 2>/dev/null)
python3 - "$sherd" "$anchor" <<'PYEOF'
import json, sys
# The anchor prints an indented JSON object, possibly after other lines.
s, a = json.loads(sys.argv[1]), json.loads(sys.argv[2][sys.argv[2].index("{"):])
z = a["zero1_gloo_step_ms"]
print(f"params {s['params']}, W={s['world']}")
print(f"  sherd step         {s['step_ms']:8.1f} ms  (rs {s['reduce_scatter_ms']:.1f}, norm {s['norm_ms']:.1f}, "
      f"opt {s['optimizer_ms']:.1f}, ag {s['all_gather_ms']:.1f})")
print(f"  torch ZeRO-1 anchor {z:8.1f} ms  (torch {a.get('torch')})")
print(f"  ratio (anchor / sherd) {z / s['step_ms']:.2f}x")
print(f"  server private memory {s['server_rss_anon']/2**20:.1f} MiB vs 16N/W {s['ideal_state_bytes']/2**20:.1f} MiB")
print(json.dumps({"sherd": s, "anchor": a}))
PYEOF
