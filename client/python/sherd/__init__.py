"""sherd: the training state of large models (fp32 master params, grads,
Adam moments) sharded across shard servers, for PyTorch.

``import sherd.torch as sherd`` for the optimizer (see its docstring). This
module holds what needs no torch: the native client (``sherd.Client``), the
errors, and the paths of the bundled ``sherd-server`` and ``sherdctl``.
"""
from __future__ import annotations

import os

from sherd.errors import SherdError

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))


def binary(name: str) -> str:
    """The path of a bundled program: ``"sherd-server"`` or ``"sherdctl"``."""
    if name not in ("sherd-server", "sherdctl"):
        raise ValueError(f"unknown sherd program {name!r} (sherd-server, sherdctl)")
    path = os.path.join(_HERE, "bin", name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{path} is missing: this sherd package was not installed with its "
            "binaries (install it with `pip install .` from the sherd repository)")
    return path


def __getattr__(name: str):
    # The native module loads on first use, so `import sherd` stays cheap.
    if name == "Client":
        from sherd._native import Client
        return Client
    raise AttributeError(f"module 'sherd' has no attribute {name!r}")


__all__ = ["SherdError", "binary", "__version__"]
