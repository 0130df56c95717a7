"""Helpers for the sherd Python tests: real shard servers (the embedded ones
the package starts), trainers under torchrun on loopback."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "workers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, elapsed: float):
        self.returncode = proc.returncode
        self.output = proc.stdout
        self.elapsed = elapsed
        self.results = {}
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                self.results[r["rank"]] = r

    def __repr__(self):
        return f"Run(rc={self.returncode}, output=...{self.output[-3000:]})"


def torchrun(world: int, opts: dict, script: str = "train.py", timeout: float = 240,
             env: dict = None) -> Run:
    """Runs a worker on `world` ranks (one embedded server each)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           os.path.join(WORKERS, script), json.dumps(opts)]
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("SHERD_SERVER", None)
    e.update(env or {})
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=e)
    return Run(proc, time.monotonic() - t0)


def python(code: str, env: dict = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.pop("SHERD_SERVER", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=e)


@pytest.fixture
def run():
    return torchrun
