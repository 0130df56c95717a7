"""Turns one device-check run into the rows for bench/RESULTS.md: every
sherd figure beside its anchor from the same run, the ratio and the issue's
target. Reads gpu_adamw_bench.json, gpu_anchor.json and step_anchor.json
from the folder given (default: $OUT). Prints markdown; prints what is
missing instead of inventing it.

Usage: python3 report.py [DIR]
"""
import json
import os
import sys


def load(d, name):
    try:
        with open(os.path.join(d, name)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"- {name}: not available ({e})")
        return {}


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", ".")
    bench = load(d, "gpu_adamw_bench.json")
    anchor = load(d, "gpu_anchor.json")
    torch = load(d, "step_anchor.json")
    by_size = {r["params_mi"]: r for r in bench.get("results", [])}
    rows = []

    def row(what, ours, theirs, anchor_name, target, higher_is_better=True):
        if ours is None or theirs is None:
            rows.append(f"| {what} | {ours if ours is not None else 'missing'} | "
                        f"{anchor_name}: {theirs if theirs is not None else 'missing'} | - | {target} |")
            return
        ratio = theirs / ours if higher_is_better else ours / theirs
        rows.append(f"| {what} | {ours:.3f} ms | {anchor_name}: {theirs:.3f} ms | "
                    f"{ratio:.2f}x | {target} |")

    for mi in (256, 16):
        r = by_size.get(mi, {})
        if not r:
            print(f"- gpu_adamw_bench has no {mi} Mi result")
            continue
        copy = r.get("copy_28B_ms")
        row(f"AdamW {mi} Mi flat vs copy of 28 B/param", r.get("adamw_flat_ms"), copy,
            "device copy", ">= 0.95x at 256 Mi")
        row(f"AdamW {mi} Mi flat vs torch fused flat", r.get("adamw_flat_ms"),
            torch.get(f"adamw_fused_flat_{mi}M_ms"), "torch fused=True, 1 tensor",
            ">= 1.15x at 256 Mi")
        row(f"AdamW {mi} Mi 64 segments vs torch fused 64 tensors", r.get("adamw_64seg_ms"),
            torch.get(f"adamw_fused_64t_{mi}M_ms"), "torch fused=True, 64 tensors",
            ">= 2.5x at 16 Mi")
        row(f"whole step {mi} Mi (64 segs, bf16 copy) vs torch's sequence",
            r.get("step_fused_ms"), torch.get(f"step_torch_64t_{mi}M_ms"),
            "unscale_+clip_grad_norm_+fused AdamW+bf16 copy, 64 tensors", ">= 1.5x")
        floor = r.get("step_fused_floor_ms_34B")
        fused = r.get("step_fused_ms")
        if floor and fused:
            rows.append(f"| whole step {mi} Mi vs its 34 B/param floor | {fused:.3f} ms | "
                        f"floor (copy-rate): {floor:.3f} ms | {fused / floor:.2f}x of floor | "
                        f"<= 1.15x |")
    if anchor.get("copy_TBps") and by_size.get(256, {}).get("copy_GBps"):
        rows.append(f"| device copy bandwidth | {by_size[256]['copy_GBps'] / 1e3:.2f} TB/s | "
                    f"torch copy_: {anchor['copy_TBps']:.2f} TB/s | "
                    f"{by_size[256]['copy_GBps'] / 1e3 / anchor['copy_TBps']:.2f}x | - |")
    print(f"\nDevice: {bench.get('device', '?')}; torch {torch.get('torch', anchor.get('torch', '?'))}\n")
    print("| what | sherd | anchor (same run) | ratio (anchor / sherd) | target |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
