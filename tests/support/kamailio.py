"""A real Kamailio running clients/kamailio (copied as the docs say) on a free loopback UDP port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .procs import require_binary, stop_process, wait_until

__all__ = ["KAMAILIO_SITE_PACKAGES", "MEMORY", "Kamailio", "free_udp_port"]

#: Shared memory (MB) and each process's own (MB). tm keeps every transaction in shared memory for its
#: wait timer (5 s) after the reply: 64 MB runs out at a few hundred REGISTER/s.
MEMORY = ("-m", "256", "-M", "16")

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "clients" / "kamailio"
#: Built by `make kamailio-venv`: Debian's /usr/bin/python3 venv holding sipauth-client and grpcio.
KAMAILIO_VENV = ROOT / ".venv-kamailio"
KAMAILIO_SITE_PACKAGES = KAMAILIO_VENV / "lib" / "python3.11" / "site-packages"
APP_PYTHON3 = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/app_python3.so")


def free_udp_port() -> int:
    """A UDP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require_runtime() -> str:
    binary = require_binary("kamailio", "kamailio kamailio-python3-modules")
    if not APP_PYTHON3.exists():
        pytest.fail(
            "Kamailio's app_python3 module is required: install it with "
            "`sudo apt-get install kamailio-python3-modules` (or run `make test`, which installs it)",
            pytrace=False,
        )
    if not (KAMAILIO_SITE_PACKAGES / "sipauth_client").exists() and not any(
        KAMAILIO_SITE_PACKAGES.glob("*sipauth_client*")
    ):
        pytest.fail(
            f"{KAMAILIO_VENV} with sipauth-client is required: run `make kamailio-venv` (`make test` builds it)",
            pytrace=False,
        )
    return binary


def _sip_probe(port: int) -> bool:
    """Whether Kamailio answers a SIP request (any status) on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        local = sock.getsockname()[1]
        probe = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@example.test>;tag=probe\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(probe.encode(), ("127.0.0.1", port))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return False
        return data.startswith(b"SIP/2.0 ")


@dataclass
class Kamailio:
    """One Kamailio process; settings go in as the docs describe: `-A` defines and KAMAILIO_* variables."""

    workdir: Path
    sipauth_target: str
    realm: str = "example.test"
    port: int = field(default_factory=free_udp_port)
    children: int = 8
    env: dict[str, str] = field(default_factory=dict)
    #: More command-line options, e.g. the memory allocator (``-x tlsf -X tlsf``).
    options: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of its SIP socket."""
        return ("127.0.0.1", self.port)

    @property
    def hostport(self) -> str:
        """host:port of its SIP socket."""
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """What Kamailio logged so far."""
        path = self.workdir / "kamailio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Kamailio:
        """Copy the recipe into the work dir, start Kamailio and wait until it answers SIP."""
        binary = _require_runtime()
        run = self.workdir / "run"
        run.mkdir(parents=True, exist_ok=True)
        for name in ("kamailio.cfg", "sipauth_kemi.py"):
            shutil.copy(RECIPE / name, self.workdir / name)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "KAMAILIO_SIPAUTH_TARGET": self.sipauth_target,
            "KAMAILIO_SIPAUTH_PYTHON_PATH": str(KAMAILIO_SITE_PACKAGES),
            **self.env,
        }
        log = (self.workdir / "kamailio.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "-f", str(self.workdir / "kamailio.cfg"),
                "-A", f"LISTEN=udp:127.0.0.1:{self.port}",
                "-A", f'SIPAUTH_SCRIPT="{self.workdir / "sipauth_kemi.py"}"',
                "-A", f'SIPAUTH_REALM="{self.realm}"',
                "-A", f"CHILDREN={self.children}",
                "-DD", "-E", *MEMORY,
                "-P", str(run / "kamailio.pid"), "-Y", str(run), "-w", str(run),
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )  # fmt: skip
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"kamailio exited with {self.proc.returncode}:\n{self.log[-4000:]}", pytrace=False)
            return _sip_probe(self.port)

        wait_until(ready, 15, f"kamailio on UDP port {self.port}")
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM to the main process stops the workers too)."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
