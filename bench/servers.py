"""The processes under test: sipauth in its production shape, the empty-handler baseline, Redis, slapd."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
REALM = "example.test"


@dataclass
class ServerProcess:
    """A server started by the bench; ``target`` once it prints its listening line."""

    name: str
    proc: subprocess.Popen[str]
    port: int = 0
    output: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The top process (the supervisor when there are several workers)."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(name: str, argv: list[str], marker: str, log: Path, env: dict[str, str] | None = None) -> ServerProcess:
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    server = ServerProcess(name, proc)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.output.append(line)
            if line.startswith(marker):
                server.port = int(line.rsplit(":", 1)[1])
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60) or not server.port:
        server.stop()
        raise RuntimeError(f"{name} did not start: {''.join(server.output)}\n{log.read_text()[-3000:]}")
    return server


def start_sipauth(
    workdir: Path, settings: dict[str, Any], *, workers: int, cpus: str | None = None, name: str = "sipauth"
) -> ServerProcess:
    """``sipauth serve --workers N`` with these settings; its JSON logs (audit lines included) go to a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "sipauth", "serve", "--config", str(config), "--workers", str(workers)]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAUTH_")}
    return _start(name, argv, "sipauth listening on ", workdir / f"{name}.log", env)


def start_empty(workdir: Path, *, cpus: str | None = None) -> ServerProcess:
    """The empty-handler baseline (bench/empty_server.py)."""
    argv = [sys.executable, "-m", "bench.empty_server"]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    return _start("empty", argv, "listening on ", workdir / "empty.log")


def wait_port_free(port: int, timeout: float = 10.0) -> None:
    """Let a stopped server release its port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
