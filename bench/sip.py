"""Part 2, SIP level: SIPp REGISTER (401 then 200) through Kamailio, three ways, at zero failures.

(a) Kamailio's own auth (auth + htable, same users); (b) Kamailio calling an
empty gRPC handler once per REGISTER, two per exchange (the offload floor);
(c) Kamailio with sipauth through clients/kamailio as shipped (challenge pool
on: one call per exchange), calling sipauth's proxies' port (``proxy_listen``);
(c0) the same with the pool off. Each scenario runs in rounds that alternate
with the others' (a, b, c, c0, a, b...), as the gRPC level does, so that the
machine's changes of speed weigh on all alike: a short calibration once,
then in each round SIPp at a rate above what the proxy can take, with a bound
on calls in flight, so it runs as fast as the proxy answers. Rates, and CPU
per exchange from /proc, added up over the rounds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import cpu_seconds
from bench.servers import ServerProcess, start_empty, start_sipauth

HERE = Path(__file__).resolve().parent
USER, PASSWORD = "user000", "secret-000"
IN_FLIGHT = 40
FLOOR_CFG = HERE / "kamailio" / "floor.cfg"
#: The TLSF allocator (docs/integrating-a-proxy.md), in every scenario alike; KAMAILIO_BENCH_OPTIONS overrides.
KAMAILIO_OPTIONS = tuple(os.environ.get("KAMAILIO_BENCH_OPTIONS", "-x tlsf -X tlsf").split())
#: Kamailio worker processes in every scenario; KAMAILIO_BENCH_CHILDREN overrides.
CHILDREN = int(os.environ.get("KAMAILIO_BENCH_CHILDREN", "8"))


def _start_kamailio(workdir: Path, cfg: Path, defines: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    from tests.support.kamailio import MEMORY, _sip_probe, free_udp_port

    port = free_udp_port()
    run = workdir / "run"
    run.mkdir(parents=True, exist_ok=True)
    argv = ["kamailio", "-f", str(cfg), "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f"CHILDREN={CHILDREN}"]
    for define in defines:
        argv += ["-A", define]
    argv += [*KAMAILIO_OPTIONS, "-DD", "-E", *MEMORY]
    argv += ["-P", str(run / "k.pid"), "-Y", str(run), "-w", str(run)]
    log = (workdir / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, cwd=workdir
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited: {(workdir / 'kamailio.log').read_text()[-3000:]}")
        if _sip_probe(port):
            return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("kamailio did not answer")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class _Totals:
    """One scenario's rounds added up."""

    calls: int = 0
    successful: int = 0
    failed: int = 0
    elapsed: float = 0.0
    kamailio_cpu: float = 0.0
    server_cpu: float | None = None
    rounds: int = 0


def _drive(workdir: Path, kamailio_pid: int, port: int, server: ServerProcess | None, calls: int, tag: str):  # noqa: PLR0917
    """SIPp runs ``calls`` REGISTER exchanges through Kamailio as fast as it answers; counts and CPU."""
    from tests.support.sipp import run_sipp

    before_k = cpu_seconds(kamailio_pid)
    before_s = cpu_seconds(server.pid) if server else 0.0
    started = time.monotonic()
    result = run_sipp(
        workdir / f"sipp-{tag}",
        "register.xml",
        f"127.0.0.1:{port}",
        calls=calls,
        rate=50000,
        auth=(USER, PASSWORD),
        auth_uri="sip:example.test",
        keys={"user": USER},
        timeout=calls / 100 + 30,
        extra=("-l", str(IN_FLIGHT)),
    )
    elapsed = time.monotonic() - started
    k_cpu = cpu_seconds(kamailio_pid) - before_k
    s_cpu = (cpu_seconds(server.pid) - before_s) if server else None
    return result, elapsed, k_cpu, s_cpu


def _summary(name: str, totals: _Totals) -> dict:
    done = max(totals.successful, 1)
    summary = {
        "rate": round(totals.successful / totals.elapsed, 1) if totals.elapsed else 0.0,
        "calls": totals.calls,
        "successful": totals.successful,
        "failed": totals.failed,
        "elapsed_s": round(totals.elapsed, 2),
        "rounds": totals.rounds,
        "kamailio_cpu_ms": round(totals.kamailio_cpu / done * 1000, 4),
        "server_cpu_ms": round(totals.server_cpu / done * 1000, 4) if totals.server_cpu is not None else None,
    }
    print(
        f"  {name:<44} {summary['rate']:>7.0f} REGISTER/s  failed {summary['failed']}  "
        f"Kamailio {summary['kamailio_cpu_ms']:.3f} ms  server {summary['server_cpu_ms'] or 0:.3f} ms CPU per exchange",
        flush=True,
    )
    return summary


class _Scenario:
    """A way of running Kamailio (and what it calls): started for each round, driven, stopped."""

    def __init__(self, name: str, start: Callable[[Path], tuple[Callable[[], None], int, int]], server: Any) -> None:
        self.name = name
        self._start = start
        self.server = server
        self.totals = _Totals()
        self.rate = 0.0

    def run(self, workdir: Path, span: float, round_number: int) -> None:
        stop, pid, port = self._start(workdir / f"round-{round_number}")
        try:
            if not self.rate:  # calibration, once: how fast this way goes, so each round lasts about `span`
                probe, elapsed, _, _ = _drive(workdir, pid, port, self.server, 1000, f"calibrate-{round_number}")
                self.rate = probe.successful / elapsed if elapsed else 100.0
            calls = max(1000, int(self.rate * span))
            result, elapsed, k_cpu, s_cpu = _drive(workdir, pid, port, self.server, calls, f"main-{round_number}")
        finally:
            stop()
        totals = self.totals
        totals.calls += calls
        totals.successful += result.successful
        totals.failed += result.failed
        totals.elapsed += elapsed
        totals.kamailio_cpu += k_cpu
        if s_cpu is not None:
            totals.server_cpu = (totals.server_cpu or 0.0) + s_cpu
        totals.rounds += 1


def run_sip(bench) -> dict:
    """(a), (b), (c), (c0) in alternating rounds; each summary is per 401 -> 200 exchange."""
    from bench.run import USERS, _sipauth_settings
    from tests.support.kamailio import KAMAILIO_SITE_PACKAGES, Kamailio
    from tests.support.procs import free_port
    from tests.support.redis_server import RedisServer
    from tests.support.slapd import LdapUser, start_slapd

    if shutil.which("sipp") is None or shutil.which("kamailio", path="/usr/sbin:/usr/bin") is None:
        raise SystemExit("SIP level needs kamailio, kamailio-python3-modules and sip-tester (make bench installs them)")
    rounds = bench.rounds
    span = bench.duration / rounds
    print(f"SIP level: SIPp REGISTER 401 -> 200 through Kamailio ({CHILDREN} children), both cores, {rounds} rounds")
    work = bench.workdir / "sip"

    # (a) Kamailio alone.
    native = work / "native"
    native.mkdir(parents=True, exist_ok=True)
    lines = [f'    $sht(users=>{name}) = "{password}";' for name, password in USERS]
    native_cfg = native / "kamailio.cfg"
    route = "event_route[htable:mod-init] {\n" + "\n".join(lines) + "\n}\n"
    native_cfg.write_text((HERE / "kamailio" / "native.cfg").read_text() + "\n" + route)

    def own_process(cfg: Path, defines: list[str], env: dict[str, str]):
        def start(workdir: Path) -> tuple[Callable[[], None], int, int]:
            proc, port = _start_kamailio(workdir, cfg, defines, env)
            return lambda: _stop(proc), proc.pid, port

        return start

    def shipped(target: str, batch: str):
        def start(workdir: Path) -> tuple[Callable[[], None], int, int]:
            kamailio = Kamailio(
                workdir,
                target,
                env={"KAMAILIO_SIPAUTH_CHALLENGE_BATCH": batch},
                options=KAMAILIO_OPTIONS,
                children=CHILDREN,
            )
            kamailio.start()
            assert kamailio.proc is not None
            return kamailio.stop, kamailio.proc.pid, kamailio.port

        return start

    empty = start_empty(bench.workdir)
    # (c) sipauth in its production shape, with the proxies' port, which Kamailio (clients/kamailio as
    # shipped) calls. One worker: on these 2 cores, shared with Kamailio and SIPp, a second worker
    # costs more CPU per exchange than it brings (README, "Performance").
    redis = RedisServer(work / "redis").start()
    slapd = start_slapd(work / "ldap", [LdapUser(name, password) for name, password in USERS])
    settings = _sipauth_settings(bench, redis.url, slapd.sipauth_settings("openldap"))
    settings["policy"]["algorithms"] = ["MD5"]  # SIPp 3.6.1 answers MD5 only
    proxy_target = f"127.0.0.1:{free_port()}"
    settings["proxy_listen"] = proxy_target
    sipauth = start_sipauth(work, settings, workers=1, name="sipauth-sip")
    floor_env = {"KAMAILIO_SIPAUTH_TARGET": empty.target, "KAMAILIO_SIPAUTH_PYTHON_PATH": str(KAMAILIO_SITE_PACKAGES)}
    floor_defines = [f'FLOOR_SCRIPT="{HERE / "kamailio" / "floor_kemi.py"}"']
    scenarios = [
        _Scenario("(a) Kamailio auth + htable", own_process(native_cfg, [], {}), None),
        _Scenario(
            "(b) floor: 2 empty gRPC calls",
            own_process(HERE / "kamailio" / "floor.cfg", floor_defines, floor_env),
            empty,
        ),
        _Scenario("(c) sipauth, challenge pool (1 call)", shipped(proxy_target, "32"), sipauth),
        _Scenario("(c0) sipauth, no pool (2 calls)", shipped(proxy_target, "0"), sipauth),
    ]
    try:
        for round_number in range(rounds):
            for index, scenario in enumerate(scenarios):
                scenario.run(work / f"scenario-{index}", span, round_number)
    finally:
        sipauth.stop()
        slapd.stop()
        redis.stop()
        empty.stop()
    runs = {scenario.name: _summary(scenario.name, scenario.totals) for scenario in scenarios}
    floor = runs["(b) floor: 2 empty gRPC calls"]
    ours = runs["(c) sipauth, challenge pool (1 call)"]
    return {
        "summary": {
            "sip_register_ratio_vs_floor": round(ours["rate"] / floor["rate"], 3) if floor["rate"] else None,
            "kamailio_cpu_ms_per_transaction": ours["kamailio_cpu_ms"],
        },
        "runs": runs,
        "in_flight": IN_FLIGHT,
    }
