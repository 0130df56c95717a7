"""The process-wide sherd runtime: which rank this is, where its shard
server is, and (by default) the server itself, started and supervised here.

Under torchrun every trainer process starts one embedded ``sherd-server``
(from the wheel) for its rank; rank 0's coordinates. The servers' addresses
travel through torchrun's own key-value store (MASTER_ADDR:MASTER_PORT), so
no port has to be agreed in advance. With ``SHERD_SERVER`` (or the config's
``server``) set, the trainer connects to that server instead.
"""
from __future__ import annotations

import atexit
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Optional

import sherd
from sherd import config as config_mod
from sherd import errors


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    try:
        return int(v) if v else default
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def _die_with_parent() -> None:
    # The server must not outlive its trainer (a killed trainer would leave
    # it holding the model's memory): SIGTERM it when the trainer dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setpgrp()  # and never take the trainer's Ctrl-C before it does


class Runtime:
    """One per process; made by sherd.torch.init()."""

    def __init__(self, cfg: config_mod.Config):
        self.cfg = cfg
        self.rank = _env_int("RANK", 0)
        self.world_size = _env_int("WORLD_SIZE", 1)
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self.local_world_size = _env_int("LOCAL_WORLD_SIZE", self.world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is outside WORLD_SIZE={self.world_size}")
        self.server_proc: Optional[subprocess.Popen] = None
        self.server_log = ""
        self.address = ""
        self.embedded = False
        self._generation = 0
        self._store = None
        self._run_dir = ""
        self.client = None
        self.optimizer = None  # the registered sherd optimizer, once made
        self._peer_addresses: Optional[List[str]] = None
        self._peer_clients: dict = {}
        self._seq: dict = {}
        server = cfg.server or os.environ.get("SHERD_SERVER", "")
        if server:
            parts = [s.strip() for s in server.split(",") if s.strip()]
            if len(parts) > 1:
                if self.local_rank >= len(parts):
                    raise ValueError(
                        f"SHERD_SERVER lists {len(parts)} servers, but this is local rank "
                        f"{self.local_rank}")
                self.address = parts[self.local_rank]
            else:
                self.address = parts[0]
        else:
            self.embedded = True
            self._start_server()
        self._connect()
        if self.world_size > 1:
            self._publish("addr", self.address)

    # ---- the key-value store (torchrun's) --------------------------------
    @property
    def store(self):
        """torchrun's TCPStore, as a client (rank 0 hosts one without torchrun)."""
        if self._store is None:
            if self.world_size == 1:
                return None
            from torch.distributed import TCPStore
            host = os.environ.get("MASTER_ADDR")
            port = os.environ.get("MASTER_PORT")
            if not host or not port:
                raise RuntimeError(
                    f"WORLD_SIZE={self.world_size} but MASTER_ADDR/MASTER_PORT are not "
                    "set: start the trainers with torchrun (or set them as torchrun does)")
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
            self._store = TCPStore(
                host, int(port), world_size=None if agent else self.world_size,
                is_master=(self.rank == 0 and not agent),
                timeout=datetime.timedelta(seconds=self.cfg.timeout_s),
                wait_for_workers=False)
        return self._store

    def _key(self, name: str, rank: Optional[int] = None) -> str:
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        r = self.rank if rank is None else rank
        return f"sherd/{run}/{restart}/{self._generation}/{name}/{r}"

    def _publish(self, name: str, value: str) -> None:
        if self.store is not None:
            self.store.set(self._key(name), value.encode())

    def _read(self, name: str, rank: int) -> str:
        try:
            return self.store.get(self._key(name, rank)).decode()
        except Exception as e:  # the store times out with a RuntimeError/DistStoreError
            raise errors.Unavailable(
                f"rank {rank} did not publish its {name} within {self.cfg.timeout_s:.0f} s "
                f"(is it running? {e})", code="UNAVAILABLE") from None

    def gather(self, name: str, value: str) -> List[str]:
        """Every rank's value for `name` (publishes this rank's first); a
        barrier too. Every rank makes the same sequence of gathers: the
        n-th gather of a name is keyed by n."""
        if self.world_size == 1:
            return [value]
        n = self._seq.get(name, 0) + 1
        self._seq[name] = n
        key = f"{name}#{n}"
        self._publish(key, value)
        return [value if r == self.rank else self._read(key, r)
                for r in range(self.world_size)]

    # ---- the embedded server ---------------------------------------------
    def _start_server(self) -> None:
        cfg = self.cfg
        if self.world_size > self.local_world_size and cfg.listen_host.startswith("127."):
            raise RuntimeError(
                f"{self.world_size} ranks on more than one node cannot reach each other's "
                "embedded servers on loopback: set the config's listen_host to this node's "
                "address, or start sherd-server yourself and set SHERD_SERVER")
        if not self._run_dir:
            base = cfg.log_dir or tempfile.gettempdir()
            os.makedirs(base, exist_ok=True)
            self._run_dir = tempfile.mkdtemp(prefix=f"sherd-rank{self.rank}-", dir=base)
        addr_file = os.path.join(self._run_dir, f"addr.{self._generation}")
        self.server_log = os.path.join(self._run_dir, f"server.{self.rank}.log")
        cluster = "py-{}-{}-{}".format(
            os.environ.get("MASTER_PORT", os.getpid()),
            os.environ.get("TORCHELASTIC_RUN_ID", "none"), self._generation)
        cmd = [sherd.binary("sherd-server"), "--device", "cpu",
               "--listen", f"{cfg.listen_host}:0", "--rank", str(self.rank),
               "--world-size", str(self.world_size), "--address-file", addr_file,
               "--cluster-id", cluster,
               "--optimizer-threads", str(cfg.optimizer_threads),
               # Well inside a call's deadline, so a lost peer comes back as
               # the server's UNAVAILABLE (naming it), not a client timeout.
               "--collective-timeout", str(max(1.0, min(cfg.timeout_s / 2, 60.0))),
               "--join-timeout", str(cfg.timeout_s)]
        if cfg.memory_limit:
            cmd += ["--memory-limit", cfg.memory_limit]
        if cfg.checkpoint_dir:
            cmd += ["--checkpoint-dir", cfg.checkpoint_dir, "--restore", cfg.restore,
                    "--checkpoint-every", str(cfg.checkpoint_every)]
        elif cfg.checkpoint_every:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        if self.rank > 0:
            # Rank 0 publishes its address once it serves.
            cmd += ["--coordinator", self._read("coordinator", 0)]
        log = open(self.server_log, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHERD_")}
        self.server_proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, preexec_fn=_die_with_parent)
        log.close()
        atexit.register(self.shutdown)
        deadline = time.monotonic() + cfg.timeout_s
        while not (os.path.exists(addr_file) and os.path.getsize(addr_file) > 0):
            if self.server_proc.poll() is not None:
                raise errors.Unavailable(
                    f"the embedded sherd-server of rank {self.rank} exited with code "
                    f"{self.server_proc.returncode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"the embedded sherd-server of rank {self.rank} did not start within "
                    f"{cfg.timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)
        with open(addr_file) as f:
            self.address = f.read().strip()
        if self.rank == 0 and self.world_size > 1:
            self._publish("coordinator", self.address)

    def log_tail(self, lines: int = 20) -> str:
        if not self.server_log or not os.path.exists(self.server_log):
            return "(no server log)"
        with open(self.server_log, errors="replace") as f:
            tail = f.readlines()[-lines:]
        return f"--- {self.server_log} (last {len(tail)} lines) ---\n" + "".join(tail)

    def _connect(self) -> None:
        from sherd._native import Client
        try:
            self.client = Client(self.address, deadline_s=self.cfg.timeout_s)
        except errors.Unavailable as e:
            how = (f"the embedded server's log:\n{self.log_tail()}" if self.embedded else
                   "start one with `sherd-server --listen ADDRESS` (see --help), or unset "
                   "SHERD_SERVER to let sherd start one per rank")
            raise errors.Unavailable(f"no sherd server reachable at {self.address}: {e}; "
                                     f"{how}") from None

    def check_server(self) -> None:
        """Raises, with the server's log, if the embedded server has died."""
        if self.server_proc is not None and self.server_proc.poll() is not None:
            raise errors.Unavailable(
                f"the embedded sherd-server of rank {self.rank} exited with code "
                f"{self.server_proc.returncode}:\n{self.log_tail()}")

    def restart_server(self, **changes: Any) -> None:
        """Stops the embedded server and starts it again with changed config
        (every rank must call this together, before a model is registered)."""
        if not self.embedded:
            raise RuntimeError("the server is not embedded: restart it yourself")
        self._stop_server()
        for k, v in changes.items():
            setattr(self.cfg, k, v)
        self._generation += 1
        self._peer_addresses = None
        self._peer_clients = {}
        self._start_server()
        self._connect()
        if self.world_size > 1:
            self._publish("addr", self.address)

    # ---- other ranks' servers (for consolidating state) -------------------
    def peer_client(self, rank: int):
        """A client of rank `rank`'s server (this rank's own for itself)."""
        if rank == self.rank:
            return self.client
        if rank not in self._peer_clients:
            from sherd._native import Client
            addr = self._read("addr", rank)
            self._peer_clients[rank] = Client(addr, deadline_s=self.cfg.timeout_s)
        return self._peer_clients[rank]

    # ---- shutdown --------------------------------------------------------
    def _stop_server(self) -> None:
        self.client = None
        self._peer_clients = {}
        p = self.server_proc
        self.server_proc = None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # lets a checkpoint in flight finish
        try:
            p.wait(timeout=max(30.0, self.cfg.timeout_s))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def shutdown(self) -> None:
        # Peers may still read this server (a consolidated state dict, the
        # last collective): wait until every rank is shutting down too,
        # bounded by the timeout (a crashed peer never arrives).
        if self.world_size > 1 and self.server_proc is not None and self._store is not None:
            try:
                self._store.set_timeout(datetime.timedelta(seconds=min(self.cfg.timeout_s, 30)))
                self.gather("exit", "1")
            except Exception:
                pass
        self._stop_server()


_runtime: Optional[Runtime] = None


def get(required: bool = True) -> Optional[Runtime]:
    if _runtime is None and required:
        raise RuntimeError("call sherd.init() first")
    return _runtime


def init(config: Any = None, **overrides: Any) -> Runtime:
    global _runtime
    if _runtime is not None:
        raise RuntimeError("sherd.init() was already called in this process "
                           "(sherd.shutdown() first to start again)")
    world = _env_int("WORLD_SIZE", 1)
    cfg = config_mod.parse(config, world_size=world, **overrides)
    if cfg.random_seed is not None:
        import torch
        torch.manual_seed(cfg.random_seed)
    _runtime = Runtime(cfg)
    return _runtime


def shutdown() -> None:
    global _runtime
    if _runtime is not None:
        _runtime.shutdown()
        _runtime = None


def describe(rt: Runtime) -> str:
    return json.dumps({"rank": rt.rank, "world_size": rt.world_size,
                       "server": rt.address, "embedded": rt.embedded,
                       "log": rt.server_log}, sort_keys=True)


if sys.platform != "linux":  # POSIX shared memory + prctl
    raise ImportError("sherd.torch runs on Linux only")
