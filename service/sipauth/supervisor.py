"""Several server processes on one port: start them, replace the ones that die, stop them together.

Each worker is a fresh ``sipauth serve --worker`` process (not a fork: gRPC
does not survive fork) binding the same address with SO_REUSEPORT, so the
kernel spreads connections over them. The supervisor serves the metrics of
all workers together (prometheus_client multiprocess mode), forwards SIGHUP
(reload) and SIGTERM (drain) to every worker and exits 0 once they have all
drained. Workers share nonce keys (a temporary key file when none is
configured), so any worker verifies any other's nonces; replay state must be
shared too, which is why several workers need Redis.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .app import serve_metrics
from .config import ConfigError, Settings, format_listen, parse_listen

__all__ = ["available_cpus", "resolve_workers", "run_supervisor"]

log = logging.getLogger("sipauth.supervisor")
_RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def available_cpus(cgroup_v2: Path = _CGROUP_V2, cgroup_v1: tuple[Path, Path] = _CGROUP_V1) -> int:
    """CPUs this process may use: the cgroup quota (a container's CPU limit) if any, else the affinity mask."""
    cpus = len(os.sched_getaffinity(0))
    quota: float | None = None
    try:
        text = cgroup_v2.read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            raw_quota = int(cgroup_v1[0].read_text())
            if raw_quota > 0:
                quota = raw_quota / int(cgroup_v1[1].read_text())
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def pinned_cpus(workers: int) -> list[int]:
    """The CPU of each of ``workers`` pinned workers: the process's CPUs in order, reused if too few."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < workers:
        log.warning("pin_workers: fewer CPUs than workers, some share one", extra={"cpus": len(allowed)})
    return [allowed[index % len(allowed)] for index in range(workers)]


def resolve_workers(settings: Settings, requested: int | None) -> int:
    """The number of worker processes; ConfigError when several would not share replay state."""
    workers = settings.workers if requested is None else requested
    shared = settings.redis.enabled
    if workers == 0:
        workers = available_cpus() if shared else 1
    if workers > 1 and not shared:
        raise ConfigError(
            "workers: several workers need shared replay state (configure redis); "
            "in-memory replay state is per process, so set workers: 1"
        )
    return workers


class _Worker:
    def __init__(self, index: int, argv: list[str], env: dict[str, str], ready_file: Path) -> None:
        self.index = index
        self.ready_file = ready_file
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        argv = [*self.argv, "--ready-file", str(self.ready_file)]
        self.proc = subprocess.Popen(argv, env=self.env)  # noqa: S603 - our own interpreter and module
        log.info("worker started", extra={"worker": self.index, "worker_pid": self.proc.pid})


def _reserve_port(host: str, port: int, field: str = "listen") -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT, so port 0 becomes one port every worker shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{field}: cannot bind {host}:{port}: {exc.strerror}") from None
    return sock, int(sock.getsockname()[1])


def _reserve_proxy_port(settings: Settings, env: dict[str, str]) -> socket.socket | None:
    """Reserve ``proxy_listen`` like ``listen`` and pass the port to the workers; None when unset."""
    if settings.proxy_listen is None:
        return None
    host, port = parse_listen(settings.proxy_listen)
    reservation, port = _reserve_port(host, port, "proxy_listen")
    env["SIPAUTH_PROXY_LISTEN"] = format_listen(host, port)
    return reservation


def _start_metrics(settings: Settings, directory: Path) -> None:
    """Serve every worker's metrics together, from their multiprocess files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    serve_metrics(settings, registry)


def _wait_ready(pool: list[_Worker], timeout: float) -> None:
    """Block until every worker serves (each touches its ready file once its port is bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(worker.ready_file.exists() for worker in pool):
            return
        if any(worker.proc is not None and worker.proc.poll() is not None for worker in pool):
            break
        time.sleep(0.05)
    log.error("not every worker is serving yet", extra={"ready": sum(w.ready_file.exists() for w in pool)})


class _Supervisor:
    def __init__(self, settings: Settings, pool: list[_Worker], metrics_dir: Path) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics_dir = metrics_dir
        self.received: list[int] = []
        self.stopping = False

    def on_signal(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def forward_signals(self) -> None:
        """Pass SIGHUP on as a reload and SIGTERM/SIGINT as a drain."""
        while self.received:
            signum = self.received.pop(0)
            if signum == signal.SIGHUP:
                log.info("reload: forwarding SIGHUP to the workers")
            else:
                self.stopping = True
                log.info("draining", extra={"grace_seconds": self.settings.shutdown_grace_seconds})
            for worker in self.pool:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    def replace_dead(self) -> None:
        """Restart workers that exited, with a growing delay for one that keeps dying."""
        now = time.monotonic()
        for worker in self.pool:
            if worker.proc is not None and worker.proc.poll() is not None:
                mark_process_dead(worker.proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
                log.error(
                    "worker died: replacing it", extra={"worker": worker.index, "exit_code": worker.proc.returncode}
                )
                worker.proc = None
                worker.next_start = now + _RESTART_BACKOFF[min(worker.restarts, len(_RESTART_BACKOFF) - 1)]
                worker.restarts += 1
            if worker.proc is None and now >= worker.next_start:
                worker.start()

    def wait_drained(self) -> int:
        """Wait for every worker to finish draining (killing stragglers after the grace period)."""
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
        code = 0
        for worker in self.pool:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            if worker.proc.returncode != 0:
                # Killed after the grace period (negative: the signal) counts as a failed drain too.
                code = code or (worker.proc.returncode if worker.proc.returncode > 0 else 1)
        return code


def run_supervisor(settings: Settings, config: Path | None, workers: int) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; returns the exit code."""
    host, port = parse_listen(settings.listen)
    reservation, port = _reserve_port(host, port)
    runtime = Path(tempfile.mkdtemp(prefix="sipauth-"))
    metrics_dir = runtime / "metrics"
    metrics_dir.mkdir()
    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["SIPAUTH_LISTEN"] = format_listen(host, port)
    proxy_reservation = _reserve_proxy_port(settings, env)
    if settings.nonce_keys_file is None:
        # Workers must verify each other's nonces: one random key for all of them.
        keys = runtime / "nonce-keys"
        keys.write_text(secrets.token_urlsafe(48) + "\n")
        keys.chmod(0o600)
        env["SIPAUTH_NONCE_KEYS_FILE"] = str(keys)
        log.warning("no nonce_keys_file configured: the workers share a random key that dies with them")
    argv = [sys.executable, "-m", "sipauth", "serve", "--worker"]
    if config is not None:
        argv += ["--config", str(config)]
    cpus = pinned_cpus(workers) if settings.pin_workers else None
    pool = [
        _Worker(index, argv if cpus is None else [*argv, "--cpu", str(cpus[index])], env, runtime / f"ready-{index}")
        for index in range(workers)
    ]
    supervisor = _Supervisor(settings, pool, metrics_dir)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    try:
        _start_metrics(settings, metrics_dir)
        for worker in supervisor.pool:
            worker.start()
        _wait_ready(supervisor.pool, timeout=60)
        if "SIPAUTH_PROXY_LISTEN" in env:
            print(f"sipauth proxy port on {env['SIPAUTH_PROXY_LISTEN']}", flush=True)
        print(f"sipauth listening on {format_listen(host, port)}", flush=True)
        log.info("supervising", extra={"workers": workers, "listen": format_listen(host, port)})
        while True:
            supervisor.forward_signals()
            if supervisor.stopping:
                break
            supervisor.replace_dead()
            time.sleep(0.1)
        code = supervisor.wait_drained()
        log.info("stopped")
        return code
    finally:
        for worker in supervisor.pool:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
        reservation.close()
        if proxy_reservation is not None:
            proxy_reservation.close()
        shutil.rmtree(runtime, ignore_errors=True)
