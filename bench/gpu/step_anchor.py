"""torch anchors for the GPU optimizer step that ../shared/anchors/gpu_anchor.py
does not measure, in the same run as bench/gpu/gpu_adamw_bench:

  adamw_fused_flat_<N>_ms   torch.optim.AdamW(fused=True) on ONE flat tensor
  adamw_fused_64t_<N>_ms    ... on 64 tensors of the same total
  step_torch_<layout>_<N>_ms  torch's usual whole step on the same data:
      GradScaler.unscale_ -> clip_grad_norm_ -> GradScaler.step(fused AdamW)
      -> GradScaler.update -> copy the params to bf16 (for the all-gather).
      Its byte floor is 54 B/param (unscale r+w 8, norm r 4, clip r+w 8,
      AdamW 28, bf16 copy r 4 + w 2); sherd's fused step moves 34.

Usage: python3 step_anchor.py [--mi 16,256] [--iters 20]
Writes JSON to stdout and to $OUT/step_anchor.json when OUT is set. Without
a GPU it runs on the CPU (a dry run of the script, not an anchor).
"""
import argparse
import json
import os
import time

import torch


def bench(fn, device, iters, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def make_params(total, tensors, device):
    sizes = [total // tensors] * tensors
    sizes[-1] += total - sum(sizes)
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mi", default="16,256", help="sizes in Mi params, comma separated")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
           "torch": torch.__version__, "iters": args.iters,
           "bytes_per_param_torch_step": 54, "bytes_per_param_sherd_step": 34}
    for mi in [int(x) for x in args.mi.split(",")]:
        total = mi << 20
        for layout, tensors in [("flat", 1), ("64t", 64)]:
            params = make_params(total, tensors, device)
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
            res[f"adamw_fused_{layout}_{mi}M_ms"] = bench(opt.step, device, args.iters) * 1e3
            # The whole step. init_scale=1 keeps the gradients' values
            # constant across iterations (unscale_ divides in place) while
            # still running every pass.
            scaler = torch.amp.GradScaler(device, init_scale=1.0)
            scaler.scale(torch.ones((), device=device))  # what a loss would do
            bf16 = [torch.empty_like(p, dtype=torch.bfloat16) for p in params]

            def step():
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, foreach=True)
                scaler.step(opt)
                scaler.update()
                torch._foreach_copy_(bf16, [p.detach() for p in params])

            res[f"step_torch_{layout}_{mi}M_ms"] = bench(step, device, args.iters) * 1e3
            del opt, scaler, bf16, params
            if device == "cuda":
                torch.cuda.empty_cache()
    text = json.dumps(res, indent=1)
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "step_anchor.json"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
