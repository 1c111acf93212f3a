"""A real redis-server on a free loopback port, in a temp dir."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .procs import free_port, require_binary, stop_process, wait_until

__all__ = ["RedisServer"]


@dataclass
class RedisServer:
    """One redis-server process; ``start`` / ``stop`` may be called repeatedly (same port)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for assertions."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        """Start it and wait for PONG."""
        binary = require_binary("redis-server", "redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--daemonize", "no",
                "--logfile", str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        wait_until(lambda: bool(client.ping()), 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM; a frozen server is resumed first so it can exit)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """Kill it at once (SIGKILL): no shutdown, connections cut mid-reply."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        """Stop it in place (SIGSTOP): the port stays open but nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
