#!/usr/bin/env bash
# One training step of the small GPT (examples/python/gpt.py, ~10.8M params
# by default) at W=2 on CPU: sherd's AdamW against torch's DDP+ZeRO-1,
# FSDP2 and DDP+fused AdamW, each variant its own torchrun job of
# bench/torch_step_bench.py (see its docstring for what is measured), then a
# table with the ratios to sherd. Every flag goes to each job.
#
#   bench/run_torch_step.sh [--steps N] [--warmup K] [--batch-size B] [--n-layer L] ...
#   VARIANTS="sherd zero1" bench/run_torch_step.sh     a subset
#   TIMEOUT=S: seconds per variant (default 1800); OUT=DIR keeps the logs there
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS=${VARIANTS:-"sherd zero1 fsdp2 ddp_fused"}
OUT=${OUT:-$(mktemp -d /tmp/sherd-torch-step.XXXXXX)}
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
for v in $VARIANTS; do
  echo "== $v (log: $OUT/$v.log)" >&2
  rc=0
  OMP_NUM_THREADS=1 timeout "${TIMEOUT:-1800}" .venv/bin/torchrun --standalone --nproc-per-node 2 \
    bench/torch_step_bench.py --variant "$v" "$@" >"$OUT/$v.log" 2>&1 || rc=$?
  if grep -q '^RESULT ' "$OUT/$v.log"; then
    grep '^RESULT ' "$OUT/$v.log" | tail -n 1 | cut -c8- >>"$OUT/results.jsonl"
  else  # no result line: the job died or timed out
    why=$( ((rc == 124)) && echo "timed out after ${TIMEOUT:-1800} s" ||
      grep -E 'Error|error' "$OUT/$v.log" | grep -v -e '^ ' -e ChildFailedError |
      tail -n 1 | cut -c1-300) || why=""
    python3 -c 'import json, sys; v, rc, why = sys.argv[1:]
print(json.dumps({"variant": v, "error": f"exit {rc}: {why}"}))' \
      "$v" "$rc" "${why:-see the log}" >>"$OUT/results.jsonl"
  fi
done
python3 - "$OUT/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if "error" not in r]
if ok:
    r = ok[0]
    print(f"GPT {r['params']:,} params ({r['n_layer']} layers x {r['n_embd']}), W={r['world']}, "
          f"batch {r['batch_size']}x{r['block_size']} per rank, {r['threads']} torch thread(s) "
          f"per rank, {r['steps']} timed steps after {r['warmup']}, "
          f"clip {r['clip'] or 'off'}, torch {r['torch']}")
base = next((r for r in ok if r["variant"] == "sherd"), None)
hdr = (f"{'variant':10} {'step ms':>9} {'fwd+bwd':>9} {'after-bwd':>9} {'tok/s':>8} "
       f"{'trainer MB':>10} {'server MB':>15} {'last loss':>9} {'step/sherd':>10} "
       f"{'after-bwd/sherd':>15} {'mem/sherd':>9}")
print(hdr)
print("-" * len(hdr))
def mem(r):  # per rank: the trainer's peak, plus the server's private memory
    return r["trainer_peak_rss_mb"] + (r.get("server_private_mb") or 0)
for r in rows:
    if "error" in r:
        print(f"{r['variant']:10} FAILED: {r['error']}")
        continue
    srv = (f"{r['server_peak_rss_mb']:.0f} ({r['server_private_mb']:.0f} prv)"
           if r.get("server_peak_rss_mb") is not None else "-")
    ratio = lambda k: f"{r[k] / base[k]:.2f}x" if base and base[k] else "-"  # noqa: E731
    memr = f"{mem(r) / mem(base):.2f}x" if base else "-"
    print(f"{r['variant']:10} {r['step_ms']:9.1f} {r['fwd_bwd_ms']:9.1f} {r['after_bwd_ms']:9.1f} "
          f"{r['tokens_per_s']:8.0f} {r['trainer_peak_rss_mb']:10.0f} {srv:>15} "
          f"{r['last_loss']:9.4f} {ratio('step_ms'):>10} {ratio('after_bwd_ms'):>15} {memr:>9}")
if base:
    print(f"sherd's servers (mean ms per step): reduce_scatter {base['reduce_scatter_ms']:.1f}, "
          f"norm {base['norm_ms']:.1f}, optimizer {base['optimizer_ms']:.1f}, "
          f"all_gather {base['all_gather_ms']:.1f}")
print("step ms: wall time per step (slowest rank); fwd+bwd and after-bwd: means over steps "
      "and ranks;\n  a barrier after backward starts after-bwd when every rank has finished "
      "backward (the skew counts in fwd+bwd).\n" + "\n".join(f"  {r['variant']}: {r['note']}" for r in ok) +
      "\nMB: peak RSS per process (max over ranks). server: sherd-server's peak RSS (VmHWM) and "
      "private (RssAnon) memory;\n  the shared param/grad buffers count in both the trainer's "
      "and the server's RSS, so mem/sherd compares\n  trainer peak + server private. "
      "last loss: the last step's loss (mean over ranks): the variants run the same\n  math on "
      "the same batches, so it should agree to a few decimals.")
PYEOF
echo "(results: $OUT/results.jsonl)"
