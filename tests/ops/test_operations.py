"""Operations: health that follows Redis, metrics per verdict, graceful drain on SIGTERM, several workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sipauth.app import RunningServer
from sipauth_client import AsyncSipauthClient, auth_pb2
from tests.support.answers import answer_for
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess

URI = "sip:example.test"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


async def _wait_health(target: str, service: str, status: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await _health(target, service) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"health of {service!r} did not become {status} within {timeout}s")


@pytest.mark.redis
async def test_health_follows_redis(server_factory: Callable[..., Any], redis_server: RedisServer) -> None:
    """Readiness goes NOT_SERVING while Redis is down (fail_closed) and back to SERVING; liveness stays SERVING."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url, "timeout_ms": 200})
    target = f"127.0.0.1:{server.port}"
    await _wait_health(target, "readiness", SERVING, 5)
    redis_server.stop()
    await _wait_health(target, "readiness", NOT_SERVING, 10)
    assert await _health(target, "") == NOT_SERVING
    assert await _health(target, "sipauth.v1.AuthService") == NOT_SERVING
    assert await _health(target, "liveness") == SERVING
    redis_server.start()
    await _wait_health(target, "readiness", SERVING, 10)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _requests(samples: dict[Any, float], verdict: str, reason: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "sipauth_requests_total" and ("verdict", verdict) in labels and ("reason", reason) in labels
    )


async def _mix_of_calls(target: str) -> None:
    async with AsyncSipauthClient(target, timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        for nc in (1, 2, 3):
            ok = answer_for(challenge, username="alice", password="wonderland", nc=nc, cnonce=f"c{nc}")
            await client.verify_response(authorization=ok, method="REGISTER", request_uri=URI)
        for nc in (4, 5):
            bad = answer_for(challenge, username="alice", password="wrong", nc=nc)
            await client.verify_response(authorization=bad, method="REGISTER", request_uri=URI)
        await client.verify_response(authorization="Digest x", method="REGISTER", request_uri=URI)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.verify_response(authorization="", method="", request_uri=URI)


async def test_metrics_count_every_verdict(sipauth_process: Callable[..., SipauthProcess]) -> None:
    """After a mix of calls the metrics endpoint shows the right count per verdict, latency and in-flight."""
    metrics_port = free_port()
    proc = sipauth_process({"metrics": {"listen": f"127.0.0.1:{metrics_port}"}, "workers": 1})
    await _mix_of_calls(proc.target)
    samples = _scrape(metrics_port)
    assert _requests(samples, "accept", "") == 3
    assert _requests(samples, "reject", "bad_credentials") == 2
    assert _requests(samples, "invalid", "malformed") == 1
    assert _requests(samples, "fault", "invalid_argument") == 1
    assert _requests(samples, "challenge", "") == 1
    count = samples[("sipauth_request_duration_seconds_count", (("rpc", "VerifyResponse"),))]
    assert count == 7
    assert samples[("sipauth_inflight_requests", ())] == 0
    text = json.dumps([list(k) for k in samples])
    assert "alice" not in text  # no usernames as label values


@pytest.mark.redis
async def test_sigterm_drains_in_flight_calls(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer
) -> None:
    """SIGTERM with 200 calls in flight: every call completes, new calls are refused, the process exits 0."""
    proc = sipauth_process(
        {"redis": {"url": redis_server.url, "timeout_ms": 8000}, "shutdown_grace_seconds": 20, "workers": 1}
    )
    async with AsyncSipauthClient(proc.target, timeout=30, retries=0) as client:
        answers = []
        for _ in range(200):
            challenge = await client.issue_challenge(method="REGISTER")
            answers.append(answer_for(challenge, username="bob", password="builder"))
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # every ACCEPT now waits on Redis
        try:
            calls = [
                asyncio.ensure_future(client.verify_response(authorization=a, method="REGISTER", request_uri=URI))
                for a in answers
            ]
            await asyncio.sleep(1.0)
            assert not any(call.done() for call in calls)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async with AsyncSipauthClient(proc.target, timeout=2, retries=0) as late:
                    await late.issue_challenge(method="REGISTER")
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        results = await asyncio.gather(*calls, return_exceptions=True)
    outcomes = [r.verdict if isinstance(r, auth_pb2.VerifyResponseResponse) else repr(r)[:300] for r in results]
    assert outcomes == [auth_pb2.VERDICT_ACCEPT] * 200
    assert proc.proc is not None
    assert proc.proc.wait(30) == 0


def _pids_in_audit(path: Path) -> set[int]:
    return {json.loads(line)["pid"] for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.redis
async def test_two_workers_share_the_port(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    """With --workers 2 calls land on both processes; killing one leaves the port served and it is replaced."""
    audit = tmp_path / "audit.log"
    metrics_port = free_port()
    proc = sipauth_process(
        {
            "redis": {"url": redis_server.url},
            "workers": 2,
            "audit_file": str(audit),
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        }
    )

    async def login_on_new_connections(count: int) -> None:
        for _ in range(count):
            # A local subchannel pool: gRPC would otherwise reuse one TCP connection for every channel
            # to the same target, and one connection always lands on the same worker.
            options = (("grpc.use_local_subchannel_pool", 1),)
            async with AsyncSipauthClient(proc.target, timeout=5, retries=3, channel_options=options) as client:
                challenge = await client.issue_challenge(method="REGISTER")
                answer = answer_for(challenge, username="alice", password="wonderland")
                verdict = await client.verify_response(authorization=answer, method="REGISTER", request_uri=URI)
                assert verdict.verdict == auth_pb2.VERDICT_ACCEPT

    await login_on_new_connections(30)
    pids = _pids_in_audit(audit)
    assert len(pids) == 2
    samples = _scrape(metrics_port)
    assert _requests(samples, "accept", "") == 30  # both workers' counts in one scrape

    os.kill(sorted(pids)[0], signal.SIGKILL)
    await login_on_new_connections(10)
    deadline = time.monotonic() + 15
    while len(_pids_in_audit(audit) - pids) == 0 and time.monotonic() < deadline:
        await login_on_new_connections(5)
    assert _pids_in_audit(audit) - pids, "the killed worker was not replaced"
    assert proc.stop() == 0


async def test_sighup_reloads_users_and_nonce_keys(
    sipauth_process: Callable[..., SipauthProcess], tmp_path: Path
) -> None:
    """SIGHUP re-reads the users file (a new user logs in) and the nonce keys (old nonces still verify)."""
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  alice: {password: wonderland}\n")
    keys = tmp_path / "nonce-keys"
    keys.write_text("a" * 40 + "\n")
    proc = sipauth_process({"users_file": str(users), "nonce_keys_file": str(keys), "workers": 1})
    async with AsyncSipauthClient(proc.target, timeout=5, retries=0) as client:
        before = await client.issue_challenge(method="REGISTER")
        unknown = answer_for(before, username="dora", password="explorer")
        refused = await client.verify_response(authorization=unknown, method="REGISTER", request_uri=URI)
        assert refused.reason == "bad_credentials"

        users.write_text("users:\n  alice: {password: wonderland}\n  dora: {password: explorer}\n")
        keys.write_text("b" * 40 + "\n" + "a" * 40 + "\n")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any('"message": "reloaded"' in line for line in proc.output):
            assert time.monotonic() < deadline, "no reload logged"
            await asyncio.sleep(0.05)

        # A nonce of the old key, answered by the new user: both reloads took effect.
        answer = answer_for(before, username="dora", password="explorer", nc=2)
        accepted = await client.verify_response(authorization=answer, method="REGISTER", request_uri=URI)
        assert accepted.verdict == auth_pb2.VERDICT_ACCEPT
        after = await client.issue_challenge(method="REGISTER")
        nonce_before = before.header_values[0].split('nonce="')[1][:8]
        nonce_after = after.header_values[0].split('nonce="')[1][:8]
        assert nonce_before != nonce_after  # the key id inside the nonce changed: minted with the new key

        # An invalid file is refused and the keys in force stay.
        keys.write_text("short\n")
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("reload failed" in line for line in proc.output):
            assert time.monotonic() < deadline, "no reload failure logged"
            await asyncio.sleep(0.05)
        still = answer_for(after, username="alice", password="wonderland")
        ok = await client.verify_response(authorization=still, method="REGISTER", request_uri=URI)
        assert ok.verdict == auth_pb2.VERDICT_ACCEPT
    assert proc.stop() == 0


def _allowed_cpus(pid: int) -> set[int]:
    try:
        return os.sched_getaffinity(pid)
    except ProcessLookupError:  # a thread that ended meanwhile
        return set()


@pytest.mark.redis
async def test_pinned_workers_run_on_one_cpu_each(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    """pin_workers: worker i (and every thread of it) may run on CPU i of the set only; calls are served."""
    cpus = sorted(os.sched_getaffinity(0))
    audit = tmp_path / "audit.log"
    proc = sipauth_process(
        {"redis": {"url": redis_server.url}, "workers": 2, "pin_workers": True, "audit_file": str(audit)}
    )
    async with AsyncSipauthClient(proc.target, timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        answer = answer_for(challenge, username="alice", password="wonderland")
        verdict = await client.verify_response(authorization=answer, method="REGISTER", request_uri=URI)
    assert verdict.verdict == auth_pb2.VERDICT_ACCEPT
    assert proc.proc is not None
    supervisor = proc.proc.pid
    expected = sorted(({cpus[index % len(cpus)]} for index in range(2)), key=sorted)

    def masks() -> list[set[int]]:
        """Per worker, the CPUs its threads may use (the union: one CPU when all are pinned alike)."""
        workers = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        out = []
        for pid in workers:
            allowed: set[int] = set()
            for task in Path(f"/proc/{pid}/task").iterdir():  # gRPC's own threads too
                allowed |= _allowed_cpus(int(task.name))
            out.append(allowed)
        return sorted(out, key=sorted)

    # The first worker to serve may answer before the other has started (and pinned itself).
    deadline = time.monotonic() + 15
    while masks() != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert masks() == expected
    assert _allowed_cpus(proc.proc.pid) == set(cpus)  # the supervisor itself is not pinned
