"""Part 2, SIP level: SIPp REGISTER (401 then 200) through Kamailio, three ways, at zero failures.

(a) Kamailio's own auth (auth + htable, same users); (b) Kamailio calling an
empty gRPC handler once per REGISTER, two per exchange (the offload floor);
(c) Kamailio with sipauth through clients/kamailio as shipped (challenge pool
on: one call per exchange), sipauth with a worker per CPU and Kamailio
calling its proxies' port (``proxy_listen``). Each run: a short calibration, then SIPp at a rate
above what the proxy can take, with a bound on calls in flight, so it runs
as fast as the proxy answers. Rates, and CPU per exchange from /proc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.cpu import cpu_seconds
from bench.servers import ServerProcess, start_empty, start_sipauth

HERE = Path(__file__).resolve().parent
USER, PASSWORD = "user000", "secret-000"
IN_FLIGHT = 40
#: The TLSF allocator (docs/integrating-a-proxy.md), in every scenario alike; KAMAILIO_BENCH_OPTIONS overrides.
KAMAILIO_OPTIONS = tuple(os.environ.get("KAMAILIO_BENCH_OPTIONS", "-x tlsf -X tlsf").split())


def _start_kamailio(workdir: Path, cfg: Path, defines: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    from tests.support.kamailio import MEMORY, _sip_probe, free_udp_port

    port = free_udp_port()
    run = workdir / "run"
    run.mkdir(parents=True, exist_ok=True)
    argv = ["kamailio", "-f", str(cfg), "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", "CHILDREN=8"]
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


def _drive(workdir: Path, name: str, kamailio_pid: int, port: int, server: ServerProcess | None, duration: float):  # noqa: PLR0917
    from tests.support.sipp import run_sipp

    def once(calls: int, tag: str):
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
            timeout=duration * 4 + 20,
            extra=("-l", str(IN_FLIGHT)),
        )
        elapsed = time.monotonic() - started
        k_cpu = cpu_seconds(kamailio_pid) - before_k
        s_cpu = (cpu_seconds(server.pid) - before_s) if server else None
        return result, elapsed, k_cpu, s_cpu

    probe, elapsed, _, _ = once(1000, "calibrate")
    rate = probe.successful / elapsed if elapsed else 100
    calls = max(1000, int(rate * duration))
    result, elapsed, k_cpu, s_cpu = once(calls, "main")
    done = max(result.successful, 1)
    summary = {
        "rate": round(result.successful / elapsed, 1),
        "calls": calls,
        "successful": result.successful,
        "failed": result.failed,
        "elapsed_s": round(elapsed, 2),
        "kamailio_cpu_ms": round(k_cpu / done * 1000, 4),
        "server_cpu_ms": round(s_cpu / done * 1000, 4) if s_cpu is not None else None,
    }
    print(
        f"  {name:<44} {summary['rate']:>7.0f} REGISTER/s  failed {summary['failed']}  "
        f"Kamailio {summary['kamailio_cpu_ms']:.3f} ms  server {summary['server_cpu_ms'] or 0:.3f} ms CPU per exchange",
        flush=True,
    )
    return summary


def run_sip(bench) -> dict:  # noqa: PLR0915 - (a), (b), (c) one after the other
    """(a), (b), (c); each summary is per 401 -> 200 exchange."""
    from bench.run import USERS, _sipauth_settings
    from tests.support.kamailio import KAMAILIO_SITE_PACKAGES, Kamailio
    from tests.support.procs import free_port
    from tests.support.redis_server import RedisServer
    from tests.support.slapd import LdapUser, start_slapd

    if shutil.which("sipp") is None or shutil.which("kamailio", path="/usr/sbin:/usr/bin") is None:
        raise SystemExit("SIP level needs kamailio, kamailio-python3-modules and sip-tester (make bench installs them)")
    duration = bench.duration
    runs: dict[str, dict] = {}
    print("SIP level: SIPp REGISTER 401 -> 200 through Kamailio (8 children), all on both cores", flush=True)
    work = bench.workdir / "sip"

    # (a) Kamailio alone.
    native = work / "native"
    native.mkdir(parents=True, exist_ok=True)
    lines = [f'    $sht(users=>{name}) = "{password}";' for name, password in USERS]
    cfg = native / "kamailio.cfg"
    route = "event_route[htable:mod-init] {\n" + "\n".join(lines) + "\n}\n"
    cfg.write_text((HERE / "kamailio" / "native.cfg").read_text() + "\n" + route)
    proc, port = _start_kamailio(native, cfg, [], {})
    try:
        runs["(a) Kamailio auth + htable"] = _drive(
            work / "native", "(a) Kamailio auth + htable", proc.pid, port, None, duration
        )
    finally:
        _stop(proc)

    # (b) Two calls per exchange to the empty handler.
    empty = start_empty(bench.workdir)
    try:
        env = {"KAMAILIO_SIPAUTH_TARGET": empty.target, "KAMAILIO_SIPAUTH_PYTHON_PATH": str(KAMAILIO_SITE_PACKAGES)}
        defines = [f'FLOOR_SCRIPT="{HERE / "kamailio" / "floor_kemi.py"}"']
        proc, port = _start_kamailio(work / "floor", HERE / "kamailio" / "floor.cfg", defines, env)
        try:
            runs["(b) floor: 2 empty gRPC calls"] = _drive(
                work / "floor", "(b) floor: 2 empty gRPC calls", proc.pid, port, empty, duration
            )
        finally:
            _stop(proc)
    finally:
        empty.stop()

    # (c) sipauth in its production shape (a worker per CPU, the proxies' port), Kamailio with
    # clients/kamailio as shipped, calling that port.
    redis = RedisServer(work / "redis").start()
    slapd = start_slapd(work / "ldap", [LdapUser(name, password) for name, password in USERS])
    settings = _sipauth_settings(bench, redis.url, slapd.sipauth_settings("openldap"))
    settings["policy"]["algorithms"] = ["MD5"]  # SIPp 3.6.1 answers MD5 only
    proxy_target = f"127.0.0.1:{free_port()}"
    settings["proxy_listen"] = proxy_target
    sipauth = start_sipauth(work, settings, workers=0, name="sipauth-sip")
    try:
        for batch, label in (("32", "(c) sipauth, challenge pool (1 call)"), ("0", "(c0) sipauth, no pool (2 calls)")):
            kamailio = Kamailio(
                work / f"sipauth-{batch}",
                proxy_target,
                env={"KAMAILIO_SIPAUTH_CHALLENGE_BATCH": batch},
                options=KAMAILIO_OPTIONS,
            )
            kamailio.start()
            try:
                assert kamailio.proc is not None
                runs[label] = _drive(
                    work / f"sipauth-{batch}", label, kamailio.proc.pid, kamailio.port, sipauth, duration
                )
            finally:
                kamailio.stop()
    finally:
        sipauth.stop()
        slapd.stop()
        redis.stop()
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
