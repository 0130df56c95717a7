"""sherd for PyTorch.

    import sherd.torch as sherd
    sherd.init()                 # rank / world / local rank from torchrun's env
    model = Net()
    opt = sherd.AdamW(model, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    for batch in data:
        model(batch).backward(); opt.step(); opt.zero_grad()

``init()`` connects to ``SHERD_SERVER`` when it is set; otherwise it starts
and supervises one ``sherd-server`` per rank (rank 0's coordinates), so
``torchrun --nproc-per-node N train.py`` needs no separate server step.
Loss scaling: ``torch.amp.GradScaler`` or ``sherd.GradScaler`` (the same,
without torch's deprecation warning); the servers unscale and skip a step
whose gradients hold inf/NaN on any rank.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("sherd.torch needs PyTorch 2.1 or newer: pip install torch") from e

_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if _version < (2, 1):
    raise ImportError(f"sherd.torch needs PyTorch 2.1 or newer, found {torch.__version__}")

from sherd import errors  # noqa: E402
from sherd.errors import SherdError  # noqa: E402
from sherd.torch import _runtime  # noqa: E402
from sherd.torch.optim import AdamW  # noqa: E402


class GradScaler(torch.amp.GradScaler):
    """torch.amp.GradScaler for sherd's optimizer: same arguments and
    semantics (device defaults to "cpu"); hands itself to the optimizer
    without torch's deprecation warning for that contract."""

    def __init__(self, device: str = "cpu", **kwargs: Any):
        super().__init__(device, **kwargs)

    def step(self, optimizer, *args: Any, **kwargs: Any):
        if not isinstance(optimizer, AdamW) or not self.is_enabled():
            return super().step(optimizer, *args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        from torch.amp.grad_scaler import OptState
        self._check_scale_growth_tracker("step")
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        retval = optimizer.step(*args, grad_scaler=self, **kwargs)
        state["stage"] = OptState.STEPPED
        return retval


def init(config: Any = None, **overrides: Any) -> "_runtime.Runtime":
    """Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) and connects this process to its shard server, starting one
    when SHERD_SERVER is not set. `config`: a dict or a JSON/YAML file with
    sherd's keys and SageMaker model parallel v2's; keyword arguments
    override it."""
    return _runtime.init(config, **overrides)


def shutdown() -> None:
    """Stops this process's embedded server (also done at exit)."""
    _runtime.shutdown()


def rank() -> int:
    return _runtime.get().rank


def world_size() -> int:
    return _runtime.get().world_size


def server_address() -> str:
    return _runtime.get().address


def save(dir: Optional[str] = None, wait: bool = True, timeout_s: float = 600.0) -> int:
    """Saves a sharded checkpoint of the model and optimizer through the
    servers (every rank calls it after the same step; rank 0's server
    commits once all have written). Returns the step saved. The servers
    write to the checkpoint_dir they were started with; `dir`, if given,
    must be that directory (sherd.resume(dir) or init(checkpoint_dir=...)).
    wait: block until this rank's shard is written (and, on rank 0, the
    checkpoint committed)."""
    rt = _runtime.get()
    if rt.optimizer is None:
        raise RuntimeError("nothing to save: create the sherd optimizer first")
    if dir is not None and rt.embedded and os.path.abspath(dir) != os.path.abspath(
            rt.cfg.checkpoint_dir or "."):
        raise ValueError(
            f"the servers write checkpoints to {rt.cfg.checkpoint_dir or '(none: off)'}, not "
            f"{dir}: pass checkpoint_dir={dir!r} to sherd.init(), or call sherd.resume({dir!r}) "
            "before creating the optimizer")
    step = rt.client.checkpoint()
    if wait:
        _wait_saved(rt, step, timeout_s)
    return step


def _wait_saved(rt: "_runtime.Runtime", step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        st = rt.client.checkpoint_status()
        if st["last_error"] and st["step"] == step and not st["in_flight"]:
            raise errors.SherdError(f"checkpoint of step {step} failed: {st['last_error']}")
        done = not st["in_flight"] and (rt.rank != 0 or st["last_committed_step"] >= step)
        if done:
            return
        if time.monotonic() > deadline:
            raise errors.DeadlineExceeded(
                f"the checkpoint of step {step} was not written within {timeout_s:.0f} s",
                code="DEADLINE_EXCEEDED")
        time.sleep(0.05)


def resume(dir: str, name: str = "newest") -> None:
    """Makes the servers restore the newest checkpoint in `dir` (or the one
    named) when the optimizer registers the model: the model's params and
    the optimizer state continue from it, on any world size (the servers
    reshard). Call on every rank after init() and before creating the
    optimizer; the embedded servers restart with `dir` as their
    checkpoint_dir, so later sherd.save() calls go there too."""
    rt = _runtime.get()
    if rt.optimizer is not None:
        raise RuntimeError("sherd.resume() must come before the optimizer is created")
    if not os.path.isdir(dir):
        raise FileNotFoundError(f"no checkpoint directory {dir}")
    if not rt.embedded:
        raise RuntimeError(
            "with SHERD_SERVER the servers are yours: start them with "
            f"--checkpoint-dir {dir} --restore {name}; they restore at registration")
    rt.restart_server(checkpoint_dir=os.path.abspath(dir), restore=name)


__all__ = ["init", "shutdown", "AdamW", "GradScaler", "save", "resume", "rank",
           "world_size", "server_address", "SherdError", "errors"]
