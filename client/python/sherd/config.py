"""sherd's configuration: a dict or a JSON/YAML file, with sherd's own keys
and SageMaker model parallel v2's (SMP v2) core keys side by side.

An unknown key is an error naming it and the known ones. A known key whose
feature is not built yet raises NotImplementedError, unless its value means
"off" (the feature's default); it is never ignored silently.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Union


@dataclass
class Config:
    # Where the shard server is: "host:port", or a comma-separated list
    # indexed by the local rank. Empty: SHERD_SERVER, else an embedded
    # server per rank, started from the wheel.
    server: str = ""
    # Embedded servers: checkpoints (off when empty), restore choice
    # ("newest", a checkpoint name, or "none"), every-K saves.
    checkpoint_dir: str = ""
    restore: str = "newest"
    checkpoint_every: int = 0
    # Embedded servers: the host they listen on (loopback: one node).
    listen_host: str = "127.0.0.1"
    optimizer_threads: int = 1
    memory_limit: str = ""          # e.g. "8GiB"; empty: no limit
    log_dir: str = ""               # server logs; default: a temporary directory
    # Every call's deadline, and the time to wait for peers to start.
    timeout_s: float = 120.0
    # Training options (the optimizer's arguments override them).
    max_grad_norm: float = 0.0
    grad_accumulation: int = 1
    param_dtype: str = "float32"    # or "bfloat16": bf16 model, fp32 master
    reduce_dtype: str = "float32"
    model_name: str = "model"
    # SMP v2 core keys.
    hybrid_shard_degree: int = 0
    sm_activation_offloading: bool = False
    activation_loading_horizon: Optional[int] = None
    fsdp_cache_flush_warnings: bool = True
    allow_empty_shards: bool = True
    tensor_parallel_degree: int = 1
    context_parallel_degree: int = 1
    expert_parallel_degree: int = 1
    random_seed: Optional[int] = None


_SMP_KEYS = {
    "hybrid_shard_degree", "sm_activation_offloading", "activation_loading_horizon",
    "fsdp_cache_flush_warnings", "allow_empty_shards", "tensor_parallel_degree",
    "context_parallel_degree", "expert_parallel_degree", "random_seed",
}
KNOWN_KEYS = sorted(f.name for f in fields(Config))


def _load_file(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore
        except ImportError as e:
            raise ImportError(
                f"{path} is YAML, which needs PyYAML (pip install pyyaml); "
                "or write the config as JSON") from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    return data


def parse(config: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
          world_size: int = 1, **overrides: Any) -> Config:
    """Builds a Config from a dict, a JSON/YAML path, and keyword overrides."""
    if config is None:
        raw: dict = {}
    elif isinstance(config, (str, os.PathLike)):
        raw = _load_file(os.fspath(config))
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise TypeError(f"config must be a dict or a file path, not {type(config).__name__}")
    raw.update(overrides)
    unknown = sorted(k for k in raw if k not in KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"unknown sherd config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; known keys: {', '.join(KNOWN_KEYS)}")
    cfg = Config()
    for k, v in raw.items():
        default = getattr(cfg, k)
        if default is not None and v is not None and not isinstance(v, type(default)):
            if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            else:
                raise TypeError(f"config key {k!r} takes a {type(default).__name__}, "
                                f"got {v!r}")
        setattr(cfg, k, v)
    _check(cfg, world_size)
    return cfg


def _not_built(key: str, value: Any, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"config key {key!r} = {value!r}: {what} is not built in sherd yet; "
        f"remove the key or set it to its default")


def _check(cfg: Config, world_size: int) -> None:
    if cfg.hybrid_shard_degree not in (0, world_size):
        if not 0 <= cfg.hybrid_shard_degree <= world_size:
            raise ValueError(f"hybrid_shard_degree must be in [0, world_size={world_size}], "
                             f"got {cfg.hybrid_shard_degree}")
        raise _not_built("hybrid_shard_degree", cfg.hybrid_shard_degree,
                         "hybrid sharding (shard within groups, replicate across)")
    if cfg.sm_activation_offloading:
        raise _not_built("sm_activation_offloading", True, "activation offloading")
    if cfg.activation_loading_horizon is not None:
        raise _not_built("activation_loading_horizon", cfg.activation_loading_horizon,
                         "activation offloading (and so its loading horizon)")
    for key in ("tensor_parallel_degree", "context_parallel_degree", "expert_parallel_degree"):
        if getattr(cfg, key) != 1:
            raise _not_built(key, getattr(cfg, key), key.replace("_degree", "").replace("_", " ") +
                             "ism")
    if cfg.param_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"param_dtype must be 'float32' or 'bfloat16', got {cfg.param_dtype!r}")
    if cfg.reduce_dtype != "float32":
        raise _not_built("reduce_dtype", cfg.reduce_dtype,
                         "reducing gradients in a type other than float32")
    if cfg.grad_accumulation < 1:
        raise ValueError(f"grad_accumulation must be >= 1, got {cfg.grad_accumulation}")
    if cfg.max_grad_norm < 0:
        raise ValueError(f"max_grad_norm must be >= 0, got {cfg.max_grad_norm}")
    if cfg.timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {cfg.timeout_s}")
