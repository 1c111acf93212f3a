"""Finding binaries, free loopback ports, and waiting for servers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["free_port", "require_binary", "stop_process", "wait_until"]

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; fail (never skip) with the install command when it is missing."""
    found = shutil.which(name)
    if found is None:
        for folder in _SBIN:
            candidate = Path(folder) / name
            if candidate.exists():
                return str(candidate)
        pytest.fail(
            f"{name} is required for this test: install it with "
            f"`sudo apt-get install {package}` (or run `make test`, which installs it)",
            pytrace=False,
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now, and never one this process was given before.

    Two ports asked for back to back (slapd's ldap:// and ldaps://, say) could otherwise be the
    same one: the first is closed again before the second is picked.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port that was not given out before")


_GIVEN: set[int] = set()


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
