"""SIPp (Debian's sip-tester) as a user agent client or server, with the scenarios of tests/e2e/scenarios."""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .kamailio import free_udp_port
from .procs import require_binary, stop_process

__all__ = ["SCENARIOS", "SippResult", "SippServer", "run_sipp"]

SCENARIOS = Path(__file__).resolve().parents[1] / "e2e" / "scenarios"


@dataclass(frozen=True)
class SippResult:
    """Outcome of one SIPp client run."""

    returncode: int
    successful: int
    failed: int
    output: str
    errors: str

    def summary(self) -> str:
        """A short text for assertion messages."""
        return (
            f"sipp exit {self.returncode}: {self.successful} successful, {self.failed} failed\n"
            f"{self.output[-3000:]}\n--- errors ---\n{self.errors[-3000:]}"
        )


def _base_args(workdir: Path, scenario: str) -> list[str]:
    return [
        require_binary("sipp", "sip-tester"),
        "-sf", str(SCENARIOS / scenario),
        "-i", "127.0.0.1",
        "-nostdin",
        "-nd",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        "-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "1",
    ]  # fmt: skip


def _last_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = list(csv.DictReader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    return rows[-1] if rows else {}


def run_sipp(
    workdir: Path,
    scenario: str,
    target: str,
    *,
    calls: int,
    rate: float | None = None,
    auth: tuple[str, str] | None = None,
    auth_uri: str | None = None,
    keys: dict[str, str] | None = None,
    timeout: float = 20,
    extra: tuple[str, ...] = (),
) -> SippResult:
    """Run a SIPp client scenario against ``target`` for ``calls`` calls and collect its statistics."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [*_base_args(workdir, scenario), target, "-p", str(free_udp_port()), "-m", str(calls)]
    args += ["-timeout", f"{int(timeout)}s", "-timeout_error", "-recv_timeout", "8s"]
    if rate is not None:
        args += ["-r", str(rate), "-rp", "1000"]
    if auth is not None:
        args += ["-au", auth[0], "-ap", auth[1]]
    if auth_uri is not None:
        # SIPp 3.6.1 writes uri="sip:" + this value: give it the Request-URI without its scheme.
        args += ["-auth_uri", auth_uri.removeprefix("sip:")]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    args += list(extra)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 15, cwd=workdir, check=False)
    stats = _last_stats(workdir / "stats.csv")
    errors = (workdir / "errors.log").read_text(errors="replace") if (workdir / "errors.log").exists() else ""
    return SippResult(
        returncode=proc.returncode,
        successful=int(stats.get("SuccessfulCall(C)", 0) or 0),
        failed=int(stats.get("FailedCall(C)", 0) or 0),
        output=proc.stdout + proc.stderr,
        errors=errors,
    )


@dataclass
class SippServer:
    """A SIPp user agent server running a scenario in the background on a UDP port."""

    workdir: Path
    scenario: str
    port: int
    keys: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SippServer:
        """Start it; SIPp binds its socket before reading its first message."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [*_base_args(self.workdir, self.scenario), "-p", str(self.port)]
        for key, value in self.keys.items():
            args += ["-key", key, value]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir)
        return self

    def stats(self) -> dict[str, str]:
        """Its latest statistics row."""
        return _last_stats(self.workdir / "stats.csv")

    def stop(self) -> None:
        """Stop it."""
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None
