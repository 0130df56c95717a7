"""Console scripts: ``sherd-server`` and ``sherdctl`` run the binaries that
the wheel carries, with the same arguments."""
from __future__ import annotations

import os
import sys

import sherd


def _exec(name: str) -> None:
    path = sherd.binary(name)
    os.execv(path, [path, *sys.argv[1:]])


def server() -> None:
    _exec("sherd-server")


def sherdctl() -> None:
    _exec("sherdctl")
