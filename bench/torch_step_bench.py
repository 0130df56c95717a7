"""One training step of the GPT in examples/python/gpt.py at W ranks on CPU,
by sherd and by torch's own data-parallel optimizers, in the same harness.

    torchrun --standalone --nproc-per-node 2 bench/torch_step_bench.py --variant sherd
    bench/run_torch_step.sh [flags]      every variant, then a table

Variants (the same model, seed, batches and AdamW hyperparameters: lr 1e-3,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matmul weights and none on
biases/LayerNorms/embeddings; no gradient clipping unless --clip):
  sherd      sherd.torch.AdamW (state in the per-rank shard servers)
  zero1      DDP (gloo) + ZeroRedundancyOptimizer(torch.optim.AdamW)
  fsdp2      torch.distributed.fsdp.fully_shard per block and the root, gloo
  ddp_fused  DDP (gloo) + torch.optim.AdamW(fused=True)

Per step, per rank: fwd+bwd = forward and backward (for DDP this includes
the gradient all-reduce, which DDP overlaps with backward; for FSDP2 the
all-gathers and reduce-scatters); after-bwd = everything after backward
returns: optimizer.step() (sherd: hand-off, reduce-scatter, norm, AdamW and
all-gather in the servers; ZeRO: AdamW on the owned shard and the params'
broadcast) and zero_grad(). Means over --steps steps after --warmup steps,
over the ranks. Memory: peak RSS of each trainer (ru_maxrss), and for sherd
the server's peak (VmHWM) and private (RssAnon) memory; the shared-memory
param/grad buffers count in both the trainer's and the server's RSS.
Rank 0 prints one line `RESULT {json}`; a failure is reported there too.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "python"))
from gpt import GPT, ByteCorpus, GPTConfig  # noqa: E402

VARIANTS = ("sherd", "zero1", "fsdp2", "ddp_fused")
NOTES = {
    "sherd": "after-bwd = opt.step (servers: reduce-scatter, norm, AdamW, all-gather) + zero_grad",
    "zero1": "fwd+bwd includes DDP's all-reduce (overlapped with backward); "
             "after-bwd = ZeRO step (AdamW on the owned shard + params broadcast)",
    "fsdp2": "fwd+bwd includes FSDP2's all-gathers and reduce-scatters; after-bwd = AdamW "
             "on the local shards",
    "ddp_fused": "fwd+bwd includes DDP's all-reduce (overlapped with backward); "
                 "after-bwd = fused AdamW on the full model",
}
HYPER = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def parse_args() -> argparse.Namespace:
    d = GPTConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="per rank (default %(default)s)")
    ap.add_argument("--block-size", type=int, default=d.block_size)
    ap.add_argument("--n-layer", type=int, default=d.n_layer)
    ap.add_argument("--n-embd", type=int, default=d.n_embd)
    ap.add_argument("--n-head", type=int, default=d.n_head)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    ap.add_argument("--clip", type=float, default=0.0,
                    help="clip the global grad norm to this in every variant (default 0: off)")
    ap.add_argument("--seed", type=int, default=1337)
    return ap.parse_args()


def param_groups(model: torch.nn.Module) -> list:
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and id(p) not in emb else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def mb(kb: float) -> float:
    return round(kb / 1024, 1)


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssShmem"):
                out[k] = mb(float(v.split()[0]))
    return out


def build(variant: str, model: torch.nn.Module, args, world: int):
    """Returns (the module to call, the optimizer, a clip function or None)."""
    clip = None
    if variant == "sherd":
        import sherd.torch as sherd_torch
        g = param_groups(model)
        g[0]["name"], g[1]["name"] = "decay", "no_decay"
        opt = sherd_torch.AdamW(g, names=model, max_grad_norm=args.clip, **HYPER)
        return model, opt, None
    if variant == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(param_groups(model), **HYPER)
        fwd = model
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(model)
        if variant == "zero1":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            opt = ZeroRedundancyOptimizer(param_groups(model), optimizer_class=torch.optim.AdamW,
                                          **HYPER)
        else:
            opt = torch.optim.AdamW(param_groups(model), fused=True, **HYPER)
    if args.clip > 0:
        clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)  # noqa: E731
    return fwd, opt, clip


def run(args, rank: int, world: int) -> dict:
    torch.manual_seed(args.seed)
    cfg = GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_embd=args.n_embd,
                    n_head=args.n_head)
    model = GPT(cfg)
    nparams = model.num_params()
    data = ByteCorpus()
    gen = torch.Generator().manual_seed(args.seed + 1 + rank)
    batches = [data.batch("train", args.batch_size, args.block_size, gen)
               for _ in range(args.warmup + args.steps)]
    del data
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd, opt, clip = build(args.variant, model, args, world)
    fb = ab = 0.0
    server = dict.fromkeys(("reduce_scatter_ms", "norm_ms", "optimizer_ms", "all_gather_ms"), 0.0)
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            dist.barrier()
            wall0 = time.perf_counter()
        t0 = time.perf_counter()
        loss = fwd(x, y)
        loss.backward()
        # After-backward is timed from the moment every rank has finished
        # backward, in every variant: the ranks' skew (waited out inside
        # DDP's backward, or in sherd's reduce-scatter) counts in fwd+bwd.
        dist.barrier()
        t1 = time.perf_counter()
        if clip is not None:
            clip()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= args.warmup:
            fb += t1 - t0
            ab += t2 - t1
            for k in server if args.variant == "sherd" else ():
                server[k] += opt.last_result[k]
    wall = time.perf_counter() - wall0
    n = args.steps
    out = {"fwd_bwd_ms": 1e3 * fb / n, "after_bwd_ms": 1e3 * ab / n,
           "step_ms": 1e3 * wall / n, "last_loss": loss.item(), "params": nparams,
           "trainer_rss_before_optimizer_mb": mb(rss_before),
           "trainer_peak_rss_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}
    if args.variant == "sherd":
        from sherd.torch import _runtime
        out.update({k: v / n for k, v in server.items()})
        st = proc_status(_runtime.get().server_proc.pid)
        out.update(server_peak_rss_mb=st.get("VmHWM"), server_private_mb=st.get("RssAnon"),
                   server_shared_mb=st.get("RssShmem"))
    return out


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    result = {"variant": args.variant, "world": world, "torch": torch.__version__,
              "batch_size": args.batch_size, "block_size": args.block_size,
              "n_layer": args.n_layer, "n_embd": args.n_embd, "steps": args.steps,
              "warmup": args.warmup, "threads": args.threads, "clip": args.clip,
              "note": NOTES[args.variant]}
    try:
        if args.variant == "sherd":
            import sherd.torch as sherd_torch
            sherd_torch.init()
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        mine = run(args, rank, world)
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    except Exception as e:  # recorded as the variant's result
        msg = str(e).strip().splitlines()
        result["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:400]
        print(f"rank {rank}: {result['error']}", file=sys.stderr, flush=True)
        if rank == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    if rank == 0:
        mean = lambda k: sum(r[k] for r in ranks) / world  # noqa: E731
        for k in ("fwd_bwd_ms", "after_bwd_ms", "last_loss"):
            result[k] = round(mean(k), 4 if k == "last_loss" else 2)
        result["step_ms"] = round(max(r["step_ms"] for r in ranks), 2)
        result["tokens_per_s"] = round(world * args.batch_size * args.block_size
                                       / (result["step_ms"] / 1e3), 1)
        result["params"] = ranks[0]["params"]
        for k in ("trainer_peak_rss_mb", "trainer_rss_before_optimizer_mb", "server_peak_rss_mb",
                  "server_private_mb", "server_shared_mb"):
            if ranks[0].get(k) is not None:
                result[k] = max(r[k] for r in ranks)
        for k in ("reduce_scatter_ms", "norm_ms", "optimizer_ms", "all_gather_ms"):
            if k in ranks[0]:
                result[k] = round(mean(k), 2)
        result["per_rank"] = ranks
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
