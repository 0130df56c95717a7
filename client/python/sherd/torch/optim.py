"""sherd.torch.AdamW: a torch.optim.Optimizer whose state lives in the shard
servers.

At construction the model's parameters are registered with this rank's
shard server and become views of its param buffer P, and their ``.grad``
views of its grad buffer G (POSIX shared memory: zero-copy). ``step()``
hands the gradients over (nothing to copy: backward wrote them into G) and
asks the server for one step: the servers reduce-scatter G, each applies
AdamW to the slice it owns, and all-gather P, so the model's parameters hold
the new values when step() returns. The fp32 master copy and the Adam
moments exist only on the servers, each rank holding 1/world of them.

``param_groups`` work as in torch: a change to a group's lr, betas, eps or
weight_decay (an LR scheduler, or by hand) takes effect at the next step.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from sherd import errors
from sherd.torch import _runtime

_HYPER = ("lr", "betas", "eps", "weight_decay")


def _named_groups(params: Any, names: Optional[Dict[int, str]]) -> List[dict]:
    """Normalizes torch's accepted forms (a module, tensors, (name, tensor)
    pairs, or dict groups of either) to groups of named parameters."""
    if isinstance(params, torch.nn.Module):
        names = {id(p): n for n, p in params.named_parameters()}
        params = [p for p in params.parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be a module or an iterable of tensors or dicts, "
                        "not a single tensor")
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out, counter = [], 0
    for g in groups:
        if not isinstance(g, dict):
            raise TypeError("param groups must all be dicts, or none")
        g = dict(g)
        plist = g["params"]
        plist = [plist] if isinstance(plist, torch.Tensor) else list(plist)
        named = []
        for p in plist:
            if isinstance(p, tuple):
                n, p = p
            else:
                n = (names or {}).get(id(p)) or f"param{counter}"
            counter += 1
            named.append((n, p))
        g["params"] = named
        out.append(g)
    return out


class AdamW(torch.optim.Optimizer):
    """AdamW (torch's semantics: decoupled weight decay, bias correction)
    with the state sharded across the shard servers.

    Args:
      params: the model (an ``nn.Module``: names come from it), or what
        ``torch.optim.AdamW`` takes: tensors, (name, tensor) pairs, or param
        group dicts. Pass ``names=model`` to name plain tensors.
      lr, betas, eps, weight_decay: as torch.optim.AdamW (per group too).
      max_grad_norm: clip the global gradient norm (across all ranks) to
        this; 0 or None: no clipping (default: the config's).
      grad_accumulation: k micro-batches per step: step() and zero_grad()
        act on every k-th call, and the gradient is the micro-batches' mean
        (default: the config's).
      param_dtype: torch.bfloat16 makes the model's params bf16 (it then
        computes in bf16) while the servers keep fp32 master weights and
        moments (default: the config's).
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *,
                 max_grad_norm: Optional[float] = None,
                 grad_accumulation: Optional[int] = None,
                 param_dtype: Optional[torch.dtype] = None,
                 names: Optional[torch.nn.Module] = None,
                 model_name: Optional[str] = None):
        rt = _runtime.get()
        if rt.optimizer is not None:
            raise RuntimeError("this process already has a sherd optimizer: its server "
                               "holds one model (sherd.shutdown() and init() to start over)")
        cfg = rt.cfg
        for what, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"invalid {what}: {v!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas: {betas!r}")
        self.rt = rt
        self.max_grad_norm = float(cfg.max_grad_norm if max_grad_norm is None
                                   else max_grad_norm or 0.0)
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {max_grad_norm}")
        self.grad_accumulation = int(grad_accumulation or cfg.grad_accumulation)
        if self.grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
        if param_dtype is None:
            param_dtype = torch.bfloat16 if cfg.param_dtype == "bfloat16" else torch.float32
        if param_dtype not in (torch.float32, torch.bfloat16):
            raise NotImplementedError(f"param_dtype {param_dtype} is not built yet "
                                      "(float32 or bfloat16)")
        self.param_dtype = param_dtype
        name_map = {id(p): n for n, p in names.named_parameters()} if names is not None else None
        groups = _named_groups(params, name_map)
        self._names: List[str] = []
        torch_groups = []
        for i, g in enumerate(groups):
            gname = g.pop("name", None) or ("default" if i == 0 else f"group{i}")
            tensors = []
            for n, p in g["params"]:
                self._check_param(n, p)
                self._names.append(n)
                tensors.append(p)
            torch_groups.append({**g, "params": tensors, "name": gname})
        if len(set(self._names)) != len(self._names):
            dup = sorted({n for n in self._names if self._names.count(n) > 1})
            raise ValueError(f"parameter names must be unique: {', '.join(dup)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(torch_groups, defaults)
        self.model_name = model_name or cfg.model_name
        self._micro = 0
        self.steps_applied = 0
        self.steps_skipped = 0
        self.last_result: Dict[str, Any] = {}
        self._register()
        rt.optimizer = self

    # ---- registration ----------------------------------------------------
    @staticmethod
    def _check_param(name: str, p: torch.Tensor) -> None:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameter {name!r} is a {type(p).__name__}, not a tensor")
        if not p.is_leaf:
            raise ValueError(f"parameter {name!r} is not a leaf tensor")
        if p.device.type != "cpu":
            raise NotImplementedError(
                f"parameter {name!r} is on {p.device}: the Python package steps CPU "
                "models so far (GPU parameters through CUDA IPC are not built yet)")
        if p.dtype != torch.float32:
            raise TypeError(f"parameter {name!r} is {p.dtype}: create the model in float32 "
                            "(param_dtype=torch.bfloat16 makes it bf16 after registration)")
        if p.is_sparse:
            raise TypeError(f"parameter {name!r} is sparse")

    def _spec(self) -> dict:
        groups = []
        for g in self.param_groups:
            groups.append({"name": g["name"], "beta1": float(g["betas"][0]),
                           "beta2": float(g["betas"][1]), "eps": float(g["eps"]),
                           "weight_decay": float(g["weight_decay"])})
        tensors = []
        for g in self.param_groups:
            for p in g["params"]:
                tensors.append([self._names[len(tensors)], list(p.shape) or [1], g["name"]])
        return {"model": self.model_name, "tensors": tensors, "groups": groups,
                "param_dtype": str(self.param_dtype), "max_grad_norm": self.max_grad_norm,
                "grad_accumulation": self.grad_accumulation}

    def _agree(self, spec: dict) -> None:
        """Every rank must register the same model: refused on every rank,
        naming the first difference, before any server sees it."""
        specs = [json.loads(x) for x in self.rt.gather("spec", json.dumps(spec, sort_keys=True))]
        for r in range(1, len(specs)):
            if specs[r] != specs[0]:
                raise errors.FailedPrecondition(
                    f"ranks build different models: rank {r} differs from rank 0: "
                    f"{_first_difference(specs[0], specs[r], r)}", code="FAILED_PRECONDITION")

    def _register(self, rejoin: bool = False) -> None:
        """Registers the model (rejoin: again, after the cluster was rebuilt,
        without the ranks' agreement on the model, which they made at start)."""
        rt = self.rt
        spec = self._spec()
        if not rejoin:
            self._agree(spec)
        client = rt.client
        info = client.register(self.model_name, [tuple(t) for t in spec["tensors"]],
                               spec["groups"])
        self.info = info
        # The membership epoch: after a failed step, a higher one says the
        # cluster was rebuilt (and rewound) rather than that the step failed.
        self._epoch = int(client.health()["epoch"])
        self._rewound_at = -math.inf
        if rejoin and not info["initialized"]:
            raise errors.FailedPrecondition(
                "the cluster lost a shard server and had no checkpoint to rewind to, so its "
                "state starts over; restart the job (or save checkpoints: checkpoint_every)",
                code="FAILED_PRECONDITION")
        self._P = torch.from_numpy(client.params())
        self._G = torch.from_numpy(client.grads())
        by_name = {n: (off, numel) for n, _shape, off, numel in client.layout()}
        self._views: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for p, name in zip(self._params(), self._names):
            off, numel = by_name[name]
            pv = self._P[off:off + numel].view(p.shape)
            gv = self._G[off:off + numel].view(p.shape)
            self._views.append((p, pv, gv))
        with torch.no_grad():
            if not info["initialized"]:
                for p, pv, _ in self._views:
                    pv.copy_(p)
                client.init_params()
                # Each rank's master slice now comes from its own P. Ranks
                # that seeded their models differently would start from
                # different P; then every P takes the owners' slices (one
                # model, each slice from its owner, as FSDP's shards).
                digest = hashlib.blake2b(client.params().data, digest_size=16).hexdigest()
                if len(set(rt.gather("init_digest", digest))) > 1:
                    warnings.warn("sherd: ranks initialized the model differently; every "
                                  "rank takes each slice from the rank that owns it "
                                  "(seed all ranks alike to start from one rank's values)")
                    rt.gather("initialized", "1")  # every rank's master is set
                    self._sync_params()
            # A restored checkpoint (or a running server's state) is in P
            # already: the server wrote all of it.
            self._G.zero_()
            for p, pv, gv in self._views:
                if self.param_dtype == torch.float32:
                    p.data = pv
                    p.grad = gv
                else:
                    p.data = pv.to(self.param_dtype)
                    p.grad = torch.zeros_like(p.data)
        self._adam_step = int(info.get("adam_step", 0))

    def _params(self) -> Iterable[torch.Tensor]:
        for g in self.param_groups:
            yield from g["params"]

    def _sync_params(self) -> None:
        """P on every rank := the owners' master slices. Ranks that seeded
        their models differently get one model (each slice from its owner,
        as FSDP's shards)."""
        self._fetch_from_owners("master", self.rt.client.params())

    def _fetch_from_owners(self, which: str, out: np.ndarray) -> None:
        """Fills the flat buffer `out` with state `which`, each rank's slice
        from its owner's server."""
        rt = self.rt
        for r in range(rt.world_size):
            b, e = rt.client.owned(r)
            if e > b:
                rt.peer_client(r).fetch(which, out[b:e], b)

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_views", None) is not None:
            raise errors.FailedPrecondition(
                "a parameter that is not part of the registered model is refused: the "
                "model registered with the shard servers is fixed once the optimizer exists",
                code="FAILED_PRECONDITION")
        super().add_param_group(param_group)

    # ---- the step ----------------------------------------------------------
    def _check_views(self) -> None:
        for (p, pv, gv), name in zip(self._views, self._names):
            if self.param_dtype == torch.float32 and p.data_ptr() != pv.data_ptr():
                raise errors.FailedPrecondition(
                    f"parameter {name!r} no longer lives in sherd's shared buffer (was "
                    "p.data replaced, e.g. by model.to() or load_state_dict(assign=True), "
                    "after the optimizer was made?); a parameter that is not part of the "
                    "registered model is refused", code="FAILED_PRECONDITION")
            if p.grad is None:
                gv.zero_()
            elif self.param_dtype != torch.float32:
                gv.copy_(p.grad)
            elif p.grad.data_ptr() != gv.data_ptr():
                gv.copy_(p.grad)  # someone replaced .grad: take its values
            if self.param_dtype == torch.float32:
                p.grad = gv

    # torch.amp.GradScaler hands itself to step() (grad_scaler=) instead of
    # unscaling and checking for inf/NaN per rank: the servers unscale and
    # take the skip decision from all ranks' gradients at once.
    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure=None, grad_scale: Optional[float] = None, grad_scaler=None):
        """One optimizer step on every rank (all ranks must call it).
        grad_scale: the factor the loss was multiplied by; grad_scaler: a
        torch.amp.GradScaler (it passes itself), whose skip bookkeeping this
        fills in from the servers' decision."""
        if grad_scaler is not None:
            return self._scaled_step(grad_scaler, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._micro += 1
        if self._micro < self.grad_accumulation:
            return loss
        self._micro = 0
        self.rt.check_server()
        self._check_views()
        scale = float(grad_scale if grad_scale is not None else 1.0) * self.grad_accumulation
        groups = []
        for g in self.param_groups:
            lr = float(g["lr"])
            b1, b2 = (float(b) for b in g["betas"])
            groups.append((g["name"], lr, b1, b2, float(g["eps"]), float(g["weight_decay"])))
        r = self._step_through_failures(groups, scale)
        self.last_result = r
        if r["applied"]:
            self.steps_applied += 1
            self._adam_step += 1
            if self.param_dtype != torch.float32:
                for p, pv, _ in self._views:
                    p.data.copy_(pv)
        else:
            self.steps_skipped += 1
        return loss

    def _step_through_failures(self, groups, scale) -> dict:
        """One step on the server. A step that fails because a shard server
        was lost is waited out (at most the config's timeout_s): a step that
        missed a peer (DEADLINE_EXCEEDED, nothing changed) is sent again;
        once the cluster is rebuilt and rewound, the optimizer re-registers
        and raises errors.Rewound with the step to continue from. Any other
        failure is raised as it is."""
        rt = self.rt
        deadline = time.monotonic() + rt.cfg.timeout_s
        while True:
            try:
                return rt.client.step(lr=groups[0][1], grad_scale=scale,
                                      max_grad_norm=self.max_grad_norm, groups=groups)
            except (errors.InvalidArgument, errors.ResourceExhausted):
                raise
            except errors.SherdError as e:
                rt.check_server()
                outcome = self._await_rebuild(e, deadline)
                if outcome == "give up":
                    raise
                if outcome == "rebuilt":
                    self._rejoin(e)  # raises Rewound
                # "again": a peer was missing and nothing changed

    def _await_rebuild(self, error: errors.SherdError, deadline: float) -> str:
        """After a failed step: "rebuilt" once the cluster was rebuilt and
        rewound (the membership epoch went up), "again" when the step missed
        a peer and may be sent again, "give up" when the failure was not a
        lost server or the rebuild did not come before the deadline."""
        rt = self.rt
        while time.monotonic() < deadline:
            try:
                h = rt.client.health()
            except errors.SherdError:
                # This rank's own server is gone: wait for its replacement
                # (restarted at the same address) and ask that one.
                time.sleep(0.2)
                try:
                    rt._connect()
                except errors.SherdError:
                    pass
                continue
            if h["epoch"] > self._epoch and h["health"] != "NOT_SERVING":
                return "rebuilt"
            if h["health"] == "SERVING":
                # Serving and not rebuilt: a step that missed a peer (slow,
                # or lost and not yet replaced) is worth sending again; so is
                # one the other ranks' trainers refused because they have not
                # learned of a rewind this one went through (their step ids
                # differ; this one's is what its server expects).
                if isinstance(error, errors.DeadlineExceeded):
                    return "again"
                if (isinstance(error, errors.FailedPrecondition)
                        and time.monotonic() - self._rewound_at < rt.cfg.timeout_s
                        and h["last_step"] + 1 == rt.client.next_step):
                    time.sleep(0.1)
                    return "again"
                return "give up"
            time.sleep(0.2)  # out of service until the lost rank is replaced
        return "give up"

    def _rejoin(self, error: errors.SherdError) -> None:
        """Registers again after the cluster was rebuilt and raises Rewound."""
        self._micro = 0
        try:
            self._register(rejoin=True)
        except errors.SherdError as e:
            raise e from error
        self.rt._peer_clients = {}  # a replaced peer is another server now
        self._rewound_at = time.monotonic()
        restored = self.rt.client.health()["restored_from"]
        raise errors.Rewound(
            f"the cluster lost a shard server and rewound to {restored or 'its newest checkpoint'}"
            f": training continues with step {self.info['next_step']} (the parameters hold "
            f"that checkpoint's values); catch sherd.errors.Rewound to reposition the data "
            f"there and go on", next_step=int(self.info["next_step"]), checkpoint=restored
        ) from error

    def _scaled_step(self, scaler, closure):
        from torch.amp.grad_scaler import OptState
        if self.grad_accumulation > 1:
            raise NotImplementedError(
                "a GradScaler with grad_accumulation > 1 is not built yet: the scale would "
                "change inside an accumulation window; accumulate by calling step() every k "
                "micro-batches instead (with the loss divided by k)")
        state = scaler._per_optimizer_states[id(self)]
        unscaled = state["stage"] is OptState.UNSCALED
        scale = 1.0 if unscaled else float(scaler.get_scale())
        loss = self.step(closure, grad_scale=scale)
        found = 0.0 if self.last_result.get("applied") else 1.0
        # update() adjusts the scale from this: the same on every rank.
        state["found_inf_per_device"] = {torch.device("cpu"): torch.tensor([found])}
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes G in place (also for set_to_none=True: the grads stay views
        of G so backward writes them there). A no-op inside an accumulation
        window (grad_accumulation > 1)."""
        if self._micro != 0:
            return
        self._G.zero_()
        for p, _, gv in self._views:
            if self.param_dtype == torch.float32:
                p.grad = gv
            elif p.grad is not None:
                p.grad.zero_()
            else:
                p.grad = torch.zeros_like(p.data)

    # ---- state dicts -------------------------------------------------------
    def _gather_state(self, which: str) -> np.ndarray:
        """The full flat buffer of an optimizer state, from every owner."""
        out = np.zeros(self.rt.client.total, dtype=np.float32)
        self._fetch_from_owners(which, out)
        return out

    def state_dict(self) -> Dict[str, Any]:
        """torch.optim.AdamW's format, consolidated from every rank's slice
        (any rank may call it, between steps)."""
        m = torch.from_numpy(self._gather_state("exp_avg"))
        v = torch.from_numpy(self._gather_state("exp_avg_sq"))
        state, groups, index = {}, [], 0
        by_name = {n: off for n, _s, off, _c in self.rt.client.layout()}
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                off, n = by_name[self._names[index]], p.numel()
                state[index] = {"step": torch.tensor(float(self._adam_step)),
                                "exp_avg": m[off:off + n].view(p.shape).clone(),
                                "exp_avg_sq": v[off:off + n].view(p.shape).clone()}
                ids.append(index)
                index += 1
            groups.append({**{k: val for k, val in g.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups,
                "sherd": {"names": list(self._names), "steps_applied": self.steps_applied,
                          "steps_skipped": self.steps_skipped}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads a state dict of this optimizer or of torch.optim.AdamW. Load
        the model's state dict first: the master copy is taken from the
        params. Every rank calls it (each loads the slice it owns)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} param groups, this "
                             f"optimizer {len(self.param_groups)}")
        for g, sg in zip(self.param_groups, groups):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError("a param group of the state dict has "
                                 f"{len(sg['params'])} params, this optimizer's "
                                 f"{len(g['params'])}")
        steps = set()
        flat_m = np.zeros(self.rt.client.total, dtype=np.float32)
        flat_v = np.zeros_like(flat_m)
        by_name = {n: off for n, _s, off, _c in self.rt.client.layout()}
        index = 0
        for g, sg in zip(self.param_groups, groups):
            for p, key in zip(g["params"], sg["params"]):
                st = state_dict["state"].get(key)
                name = self._names[index]
                index += 1
                if st is None:
                    steps.add(0)
                    continue
                for what in ("exp_avg", "exp_avg_sq"):
                    if tuple(st[what].shape) != tuple(p.shape):
                        raise ValueError(f"state of {name!r}: {what} has shape "
                                         f"{tuple(st[what].shape)}, the param {tuple(p.shape)}")
                off = by_name[name]
                flat_m[off:off + p.numel()] = st["exp_avg"].detach().float().reshape(-1).numpy()
                flat_v[off:off + p.numel()] = st["exp_avg_sq"].detach().float().reshape(-1).numpy()
                steps.add(int(float(st["step"])))
        if len(steps) > 1:
            raise ValueError(f"the params' step counts differ ({sorted(steps)}): sherd "
                             "keeps one count for the model")
        for g, sg in zip(self.param_groups, groups):
            for k, val in sg.items():
                if k not in ("params", "name"):
                    g[k] = tuple(val) if k == "betas" else val
        adam_step = steps.pop() if steps else 0
        client = self.rt.client
        # No rank may still be reading a slice (state_dict) that this
        # replaces: every rank arrives first.
        self.rt.gather("state_loading", "1")
        with torch.no_grad():
            if self.param_dtype != torch.float32:
                for p, pv, _ in self._views:
                    pv.copy_(p)
        client.init_params(force=True, adam_step=adam_step)
        b, e = client.owned(self.rt.rank)
        if e > b:
            client.push("exp_avg", flat_m[b:e], b)
            client.push("exp_avg_sq", flat_v[b:e], b)
        self._adam_step = adam_step
        self.rt.gather("state_loaded", "1")  # no rank reads a slice before it is loaded


def _first_difference(a: dict, b: dict, rank: int) -> str:
    """The first difference between two ranks' model specs, in words."""
    there = f"on rank {rank}"
    ta, tb = a["tensors"], b["tensors"]
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x != y:
            return (f"tensor #{i} is '{x[0]}' {x[1]} in group '{x[2]}' on rank 0, "
                    f"'{y[0]}' {y[1]} in group '{y[2]}' {there}")
    if len(ta) != len(tb):
        return f"{len(ta)} tensors on rank 0, {len(tb)} {there}"
    ga, gb = a["groups"], b["groups"]
    if len(ga) != len(gb):
        return f"{len(ga)} param groups on rank 0, {len(gb)} {there}"
    for x, y in zip(ga, gb):
        for k in sorted(x):
            if x[k] != y.get(k):
                return f"param group '{x['name']}': {k} {x[k]} on rank 0, {y.get(k)} {there}"
    for k in sorted(a):
        if a[k] != b.get(k):
            return f"{k} {a[k]!r} on rank 0, {b.get(k)!r} {there}"
    return "(no difference found)"
