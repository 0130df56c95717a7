"""A test trainer, run under torchrun by the tests: N steps of a small
transformer through sherd, next to a single-process torch.optim.AdamW
reference stepped on the rank-averaged gradient (every rank can compute
every rank's batches, so each process holds the full reference).

    torchrun --nproc-per-node W train.py '{"steps": 5, "clip": 0.05, ...}'

Each rank prints one line "RESULT <json>" at the end: the relative
difference between sherd's fp32 master and the reference's params, and the
counters the tests check.
"""
import copy
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import sherd
import sherd.torch as st

sys.path.insert(0, os.path.dirname(__file__))
from tiny_gpt import TinyGPT, batch  # noqa: E402

opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
torch.set_num_threads(1)
st.init(opts.get("config", {}))
W, R = st.world_size(), st.rank()
if opts.get("resume"):
    st.resume(opts["resume"])
steps = opts.get("steps", 5)
accum = opts.get("accum", 1)
clip = opts.get("clip", 0.0)
bf16 = opts.get("bf16", False)
lr = opts.get("lr", 1e-2)
result = {"rank": R}

torch.manual_seed(opts.get("seed", 0) + (R if opts.get("seed_per_rank") else 0))
model = TinyGPT(hidden=opts.get("hidden_by_rank", {}).get(str(R), 16))
ref = copy.deepcopy(model)
if opts.get("seed_per_rank"):  # the reference: each slice from its owner
    ref = None
if opts.get("check_zero_copy"):  # no reference: its comparison reads over gRPC
    ref = None


def groups_of(m, named):
    if not opts.get("groups"):
        return None
    decay = [(n, p) if named else p for n, p in m.named_parameters() if p.dim() >= 2]
    no_decay = [(n, p) if named else p for n, p in m.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr / 2}]


params = groups_of(model, True) or model
opt = st.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05,
               max_grad_norm=clip, grad_accumulation=accum,
               param_dtype=torch.bfloat16 if bf16 else torch.float32)
result["p_digest"] = __import__("hashlib").sha256(
    b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())).hexdigest()
ropt = None
if ref is not None:
    ropt = torch.optim.AdamW(groups_of(ref, False) or ref.parameters(), lr=lr,
                             betas=(0.9, 0.95), weight_decay=0.05)
    compute = copy.deepcopy(ref).to(torch.bfloat16) if bf16 else ref


def schedulers():
    if not opts.get("scheduler"):
        return []
    f = lambda s: 0.5 ** (s // 2) * min(1.0, (s + 1) / 3)  # noqa: E731
    out = [torch.optim.lr_scheduler.LambdaLR(opt, f)]
    if ropt is not None:
        out.append(torch.optim.lr_scheduler.LambdaLR(ropt, f))
    return out


scheds = schedulers()
scaler = st.GradScaler(init_scale=2.0 ** 10, growth_interval=2) if opts.get("scaler") else None
overflow_step = opts.get("overflow_step", -1)
overflow_rank = opts.get("overflow_rank", W - 1)
if opts.get("replace_param"):
    with torch.no_grad():
        model.head.weight.data = model.head.weight.data.clone()
if opts.get("add_group"):
    try:
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    except sherd.SherdError as e:
        result["add_group_error"] = f"{type(e).__name__}: {e}"

t_step = []
for t in range(steps):
    if opts.get("stall_rank") == R and t == opts.get("stall_step", 1):
        # A rank that stops stepping: wait for rank 0 to report, then leave.
        for _ in range(600):
            if os.path.exists(opts["done_file"]):
                break
            time.sleep(0.1)
        break
    # sherd: this rank's micro-batches.
    t0 = time.monotonic()
    try:
        for k in range(accum):
            x, y = batch(t, R, k)
            loss = model(x, y)
            (scaler.scale(loss) if scaler else loss).backward()
            if t == overflow_step and R == overflow_rank and k == accum - 1:
                with torch.no_grad():
                    next(model.parameters()).grad.view(-1)[0] = float("inf")
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step(**({"grad_scale": opts["grad_scale"]} if "grad_scale" in opts else {}))
            opt.zero_grad()
    except sherd.SherdError as e:
        result["step_error"] = f"{type(e).__name__}: {e}"
        result["step_error_after_s"] = time.monotonic() - t0
        break
    t_step.append(time.monotonic() - t0)
    # The reference: per-batch grads in fp32, summed, over W * accum.
    if ropt is not None:
        total = [torch.zeros_like(p) for p in ref.parameters()]
        for r in range(W):
            for k in range(accum):
                compute.zero_grad()
                x, y = batch(t, r, k)
                compute(x, y).backward()
                for acc, p in zip(total, compute.parameters()):
                    acc += p.grad.float()
        skip = t == overflow_step
        if not skip:
            for p, acc in zip(ref.parameters(), total):
                p.grad = acc * (1.0 / (W * accum))
            if clip:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
            ropt.step()
            ropt.zero_grad()
            if bf16:
                with torch.no_grad():
                    for c, p in zip(compute.parameters(), ref.parameters()):
                        c.copy_(p)
    for s in scheds:  # after both optimizers stepped
        s.step()

result.update(applied=opt.steps_applied, skipped=opt.steps_skipped,
              lrs=[g["lr"] for g in opt.param_groups])
if scaler:
    result["scale"] = scaler.get_scale()
# Before anything below reads state through the gRPC data plane.
if opts.get("check_zero_copy"):
    P, G = opt._P, opt._G
    pb, pe = P.data_ptr(), P.data_ptr() + P.numel() * 4
    gb, ge = G.data_ptr(), G.data_ptr() + G.numel() * 4
    result["params_in_P"] = all(pb <= p.data_ptr() and p.data_ptr() + p.numel() * 4 <= pe
                                for p in model.parameters())
    result["grads_in_G"] = all(gb <= p.grad.data_ptr() and
                               p.grad.data_ptr() + p.numel() * 4 <= ge
                               for p in model.parameters())
    out = subprocess.run([sherd.binary("sherdctl"), "--server", st.server_address(), "--json",
                          "status"], capture_output=True, text=True, check=True)
    ranks = json.loads(out.stdout)
    result["inline_bytes"] = sum(int(r.get("inline_bytes_received", 0)) +
                                 int(r.get("inline_bytes_sent", 0)) for r in ranks)
    result["status_ranks"] = len(ranks)
if ref is not None and "step_error" not in result:
    master = torch.from_numpy(opt._gather_state("master"))
    layout = {n: (off, c) for n, _s, off, c in st._runtime.get().client.layout()}
    num = den = 0.0
    for (n, p) in ref.named_parameters():
        off, c = layout[n]
        a = master[off:off + c].double()
        b = p.detach().reshape(-1).double()
        num += float(((a - b) ** 2).sum())
        den += float((b ** 2).sum())
    result["rel_diff"] = math.sqrt(num / den)
    # The model's params are the (bf16 of the) master.
    result["params_are_master"] = all(
        torch.equal(p.detach().reshape(-1).float(),
                    master[layout[n][0]:layout[n][0] + layout[n][1]].to(p.dtype).float())
        for n, p in model.named_parameters())
if opts.get("state_dict"):
    sd = opt.state_dict()
    rsd = ropt.state_dict()
    diffs = []
    for i, s in rsd["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            a, b = sd["state"][i][k].double(), s[k].double()
            diffs.append(float((a - b).norm() / max(float(b.norm()), 1e-30)))
    result["state_rel_diff"] = max(diffs)
    result["state_step"] = float(sd["state"][0]["step"])
    opt.load_state_dict(sd)
    sd2 = opt.state_dict()
    result["round_trip_equal"] = all(
        torch.equal(sd["state"][i][k], sd2["state"][i][k])
        for i in sd["state"] for k in ("exp_avg", "exp_avg_sq"))
    # Load torch's own optimizer state (and the model's) into sherd, then
    # one more step on both must agree.
    model.load_state_dict(ref.state_dict())
    opt.load_state_dict(rsd)
    x, y = batch(100, R, 0)
    model(x, y).backward()
    opt.step()
    opt.zero_grad()
    total = [torch.zeros_like(p) for p in ref.parameters()]
    for r in range(W):
        ref.zero_grad()
        xr, yr = batch(100, r, 0)
        ref(xr, yr).backward()
        for acc, p in zip(total, ref.parameters()):
            acc += p.grad
    for p, acc in zip(ref.parameters(), total):
        p.grad = acc / W
    ropt.step()
    num = sum(float(((a.detach().double() - b.detach().double()) ** 2).sum())
              for a, b in zip(model.parameters(), ref.parameters()))
    den = sum(float((b.detach().double() ** 2).sum()) for b in ref.parameters())
    result["after_load_rel_diff"] = math.sqrt(num / den)
if opts.get("save"):
    result["saved_step"] = st.save(opts["config"]["checkpoint_dir"])
if opts.get("eval"):
    x, y = batch(999, 0, 0)
    with torch.no_grad():
        result["eval_loss"] = float(model(x, y))
if opts.get("done_file") and R == 0:
    open(opts["done_file"], "w").close()
sys.stdout.flush()
os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())  # one write: ranks never interleave
