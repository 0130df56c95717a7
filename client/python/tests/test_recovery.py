"""A lost shard server does not end a PyTorch job: the trainers wait out the
rebuild, get sherd.errors.Rewound with the step to continue from, and the
run ends with the params of a run without the failure (issue 13)."""
import json
import os
import signal
import subprocess
import sys
import time

import sherd

from conftest import WORKERS, Run, free_port

STEPS = 10


class Servers:
    """Two external shard servers (SHERD_SERVER), checkpointing every 2 steps."""

    def __init__(self, tmp_path, name):
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True)
        self.ports = [free_port(), free_port()]
        self.procs = [None, None]
        for r in (0, 1):
            self.start(r)

    def address(self, r):
        return f"127.0.0.1:{self.ports[r]}"

    def start(self, r):
        args = [sherd.binary("sherd-server"), "--device", "cpu", "--listen", self.address(r),
                "--rank", str(r), "--world-size", "2", "--checkpoint-dir", str(self.dir / "ckpt"),
                "--checkpoint-every", "2", "--restore", "none", "--collective-timeout", "3"]
        if r:
            args += ["--coordinator", self.address(0)]
        log = open(self.dir.parent / f"{self.dir.name}-server{r}.log", "a")
        self.procs[r] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)

    def kill(self, r):
        self.procs[r].send_signal(signal.SIGKILL)
        self.procs[r].wait(timeout=10)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=30)


def trainers(servers, on_line=None, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           os.path.join(WORKERS, "recover.py"), json.dumps({"steps": STEPS})]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               SHERD_SERVER=f"{servers.address(0)},{servers.address(1)}")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env)
    out = []
    for line in p.stdout:
        out.append(line)
        if on_line:
            on_line(line)
        assert time.monotonic() - t0 < timeout, "".join(out[-40:])
    p.wait()
    return Run(subprocess.CompletedProcess(cmd, p.returncode, "".join(out)),
               time.monotonic() - t0)


def tail(run, n=60):
    """The run's output without the long RESULT lines."""
    return "\n".join([l for l in run.output.splitlines() if not l.startswith("RESULT")][-n:])


def test_a_lost_server_rewinds_the_python_trainers_and_training_goes_on(tmp_path):
    reference = Servers(tmp_path, "reference")
    try:
        ref = trainers(reference)
    finally:
        reference.stop()
    assert ref.returncode == 0, tail(ref)
    assert ref.results[0]["rewinds"] == [], ref

    servers = Servers(tmp_path, "failure")
    killed = []

    def on_line(line):
        # Once step 5 is done (so ckpt-4 has committed), rank 1's server
        # dies and comes back at its address.
        if not killed and line.startswith("STEP 0 5"):
            killed.append(time.monotonic())
            servers.kill(1)
            servers.start(1)

    try:
        run = trainers(servers, on_line)
    finally:
        servers.stop()
    assert run.returncode == 0, tail(run)
    assert killed, tail(run)
    for r in (0, 1):
        rewinds = run.results[r]["rewinds"]
        assert len(rewinds) >= 1, tail(run)
        assert rewinds[0][1] >= 5, rewinds  # never back past the committed ckpt-4
        assert rewinds[0][2].startswith("ckpt-"), rewinds
        # The same params as the run without a failure, bit for bit.
        assert run.results[r]["params"] == ref.results[r]["params"], r
