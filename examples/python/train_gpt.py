"""Trains the small GPT of gpt.py through sherd: every rank runs its own
trainer on its own random batches, and sherd's AdamW keeps the fp32 master
params and Adam moments in the shard servers (one per rank, started by
sherd.init()), each holding 1/world of them.

    torchrun --nproc-per-node 2 examples/python/train_gpt.py [--steps 200] ...

Rank 0 logs the train loss, learning rate, global tokens/s and where the
step's time went (forward+backward in the trainer; reduce-scatter, norm,
optimizer and all-gather in the servers), compares the held-out validation
loss before and after training, and shows `sherdctl status`. Exits non-zero
if the validation loss did not fall.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt import GPT, ByteCorpus, GPTConfig  # noqa: E402

import sherd  # noqa: E402
import sherd.torch as sherd_torch  # noqa: E402


def parse_args() -> argparse.Namespace:
    d = GPTConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = ap.add_argument
    arg("--steps", type=int, default=120, help="optimizer steps (default %(default)s)")
    arg("--batch-size", type=int, default=8,
        help="sequences per rank per step (default %(default)s)")
    arg("--block-size", type=int, default=d.block_size,
        help="context length (default %(default)s)")
    arg("--n-layer", type=int, default=d.n_layer, help="blocks (default %(default)s)")
    arg("--n-embd", type=int, default=d.n_embd, help="width (default %(default)s)")
    arg("--n-head", type=int, default=d.n_head, help="attention heads (default %(default)s)")
    arg("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    arg("--warmup", type=int, default=None,
        help="linear warmup steps, then cosine decay to lr/10 (default: steps/10)")
    arg("--log-every", type=int, default=10,
        help="log the mean of every N steps (default %(default)s)")
    arg("--eval-every", type=int, default=100,
        help="validation loss every N steps, 0: only before and after (default %(default)s)")
    arg("--eval-batches", type=int, default=8,
        help="validation batches per evaluation, split over the ranks (default %(default)s)")
    arg("--threads", type=int, default=1,
        help="torch.set_num_threads per rank (default %(default)s)")
    arg("--seed", type=int, default=1337, help="(default %(default)s)")
    return ap.parse_args()


def lr_lambda(steps: int, warmup: int):
    def f(step: int) -> float:  # step: the number of steps taken
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def all_mean(values: list, world: int) -> list:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return (t / world).tolist()


@torch.no_grad()
def evaluate(model, data, args, rank: int, world: int) -> float:
    """Mean loss over the same eval_batches validation batches every time,
    each rank computing its share."""
    model.eval()
    g = torch.Generator().manual_seed(12345)
    total, n = 0.0, 0
    for i in range(args.eval_batches):
        x, y = data.batch("val", args.batch_size, args.block_size, g)
        if i % world == rank:
            total += model(x, y).item()
            n += 1
    model.train()
    s, c = all_mean([total, n], world)
    return s / max(c, 1e-9)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    sherd_torch.init()  # starts this rank's shard server
    rank, world = sherd_torch.rank(), sherd_torch.world_size()
    if world > 1:  # for averaging the logged losses across ranks only
        dist.init_process_group("gloo")
    log = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(args.seed)  # the same initial model on every rank
    cfg = GPTConfig(block_size=args.block_size, n_layer=args.n_layer,
                    n_embd=args.n_embd, n_head=args.n_head)
    model = GPT(cfg)
    data = ByteCorpus()
    gen = torch.Generator().manual_seed(args.seed + 1 + rank)  # each rank its own batches
    log(f"GPT {cfg}\n  {model.num_params():,} parameters; corpus: Python's stdlib, "
        f"{len(data.splits['train']):,} train / {len(data.splits['val']):,} val bytes; "
        f"world {world}, batch {args.batch_size}x{args.block_size} per rank, "
        f"{args.threads} thread(s) per rank")

    # Weight decay on the matmul weights only: not on biases, LayerNorms or
    # the embeddings (the token embedding is also the tied LM head).
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and id(p) not in emb else no_decay).append(p)
    opt = sherd_torch.AdamW([{"params": decay, "name": "decay"},
                             {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}],
                            names=model, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            max_grad_norm=1.0)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.steps, warmup))
    log(f"  sherd AdamW: {len(decay)} tensors with weight decay 0.1, {len(no_decay)} without; "
        f"lr {args.lr:g}, {warmup} warmup steps then cosine; max_grad_norm 1.0; "
        f"server {sherd_torch.server_address()}")
    log("  (logged per step: fwd+bwd in this trainer; opt.step's wall time, of which the "
        "servers' reduce_scatter also waits for the slowest rank's backward)")

    t_start = time.perf_counter()
    val_before = evaluate(model, data, args, rank, world)
    log(f"validation loss before training: {val_before:.4f}")
    tokens_per_step = world * args.batch_size * args.block_size
    acc = dict(loss=0.0, fb=0.0, step=0.0, rs=0.0, norm=0.0, opt=0.0, ag=0.0, n=0)
    interval_t0 = time.perf_counter()
    first_loss = last_loss = None
    for step in range(1, args.steps + 1):
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        x, y = data.batch("train", args.batch_size, args.block_size, gen)
        loss = model(x, y)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        opt.zero_grad()
        sched.step()
        r = opt.last_result
        for k, v in (("loss", loss.item()), ("fb", t1 - t0), ("step", t2 - t1),
                     ("rs", r["reduce_scatter_ms"] / 1e3), ("norm", r["norm_ms"] / 1e3),
                     ("opt", r["optimizer_ms"] / 1e3), ("ag", r["all_gather_ms"] / 1e3)):
            acc[k] += v
        acc["n"] += 1
        if step % args.log_every == 0 or step == args.steps:
            dt = time.perf_counter() - interval_t0
            n = acc["n"]
            train_loss = all_mean([acc["loss"] / n], world)[0]
            first_loss = train_loss if first_loss is None else first_loss
            last_loss = train_loss
            ms = {k: 1e3 * acc[k] / n for k in ("fb", "step", "rs", "norm", "opt", "ag")}
            log(f"step {step:5d} | loss {train_loss:.4f} | lr {lr:.2e} | "
                f"{tokens_per_step * n / dt:7.0f} tok/s | fwd+bwd {ms['fb']:6.0f} ms | "
                f"opt.step {ms['step']:5.1f} ms (server: reduce_scatter {ms['rs']:.1f}, "
                f"norm {ms['norm']:.1f}, optimizer {ms['opt']:.1f}, all_gather {ms['ag']:.1f})"
                f" | grad_norm {r['grad_norm']:.3f}")
            acc = dict.fromkeys(acc, 0.0)
            acc["n"] = 0
            interval_t0 = time.perf_counter()
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            log(f"step {step:5d} | validation loss {evaluate(model, data, args, rank, world):.4f}")
            interval_t0 = time.perf_counter()

    val_after = evaluate(model, data, args, rank, world)
    total = time.perf_counter() - t_start
    log(f"train loss (mean over a log interval): {first_loss:.4f} first -> {last_loss:.4f} last")
    log(f"validation loss: {val_before:.4f} before -> {val_after:.4f} after "
        f"{args.steps} steps ({'fell' if val_after < val_before else 'DID NOT FALL'})")
    log(f"total time {total:.1f} s ({args.steps} steps, "
        f"{opt.steps_applied} applied, {opt.steps_skipped} skipped)")
    if rank == 0:
        cmd = [sherd.binary("sherdctl"), "--server", sherd_torch.server_address(), "status"]
        print("$ sherdctl --server", sherd_torch.server_address(), "status", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        print(out.stdout + out.stderr, end="", flush=True)
    if world > 1:
        dist.barrier()  # the other servers stay up until rank 0's status is shown
        dist.destroy_process_group()
    sherd_torch.shutdown()
    return 0 if val_after < val_before else 1


if __name__ == "__main__":
    sys.exit(main())
