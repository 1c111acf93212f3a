"""A real sipauth server process (``python -m sipauth serve``) on a free port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from .procs import stop_process

__all__ = ["EXAMPLES", "SipauthProcess"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_READY = re.compile(r"sipauth listening on \S+:(\d+)")
# Printed before the listening line when proxy_listen is set.
_PROXY = re.compile(r"sipauth proxy port on \S+:(\d+)")


class SipauthProcess:
    """Starts sipauth with a settings dict; ``target`` is its host:port once started."""

    def __init__(self, workdir: Path, settings: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.settings = {"listen": "127.0.0.1:0", **settings}
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        #: The proxies' port (proxy_listen), once started; 0 when not configured.
        self.proxy_port = 0
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def proxy_target(self) -> str:
        """host:port of the proxies' port (proxy_listen)."""
        return f"127.0.0.1:{self.proxy_port}"

    def start(self, timeout: float = 20.0) -> SipauthProcess:
        """Start and wait for the 'listening' line."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "sipauth.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAUTH_")}
        env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipauth", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                # Workers share the pipe: a line may be interleaved with another process's output.
                # The first line of this start counts (a restart may follow an earlier start).
                proxy = _PROXY.match(line)
                if proxy and not ready.is_set():
                    self.proxy_port = int(proxy[1])
                match = _READY.match(line)
                if match and not ready.is_set():
                    self.port = int(match[1])
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("sipauth did not start:\n" + "".join(self.output))
        return self

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        code = 0
        if self.proc is not None:
            code = stop_process(self.proc)
            if self._reader is not None:
                self._reader.join(5)
            self.proc = None
        return code
