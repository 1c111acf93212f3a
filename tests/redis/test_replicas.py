"""Several sipauth processes on one standalone Redis: shared nonces, one ACCEPT per answer, outages, fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from sipauth.replay.fallback import FallbackReplayGuard
from tests.redis.traffic import Outcome, answer, attempt, challenge, client, concurrent_copies, verify
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.redis


def replica_settings(redis: dict[str, Any], nonce_keys_file: Path) -> dict[str, Any]:
    """Settings of one replica of a shared deployment."""
    return {"redis": redis, "nonce_keys_file": str(nonce_keys_file), "log_level": "warning"}


async def test_three_replicas_share_nonces_and_accept_an_answer_once(
    redis_server: RedisServer, sipauth_process: Callable[..., SipauthProcess], nonce_keys_file: Path
) -> None:
    """Nonces of any of three replicas are accepted by any other, and 200 copies of one answer get exactly one ACCEPT.

    The copies are sent at once, spread over the three replicas; the 199 others are STALE (nonce_replayed).
    """
    settings = replica_settings({"url": redis_server.url}, nonce_keys_file)
    replicas = [sipauth_process(settings, name=f"replica{index}") for index in range(3)]
    clients = [client(replica.target, timeout=5) for replica in replicas]
    try:
        for minting in clients:
            for verifying in clients:
                authorization, outcome = await attempt(minting, verifying)
                assert outcome.verdict == "ACCEPT"
                for other in clients:
                    replayed = await verify(other, authorization)
                    assert (replayed.verdict, replayed.reason) == ("STALE", "nonce_replayed")
        authorization = answer(await challenge(clients[0]))
        verdicts = await concurrent_copies(clients, authorization, 200)
        assert verdicts.count("ACCEPT") == 1
        assert verdicts.count("STALE") == 199
    finally:
        for sipauth in clients:
            await sipauth.close()


async def _load(clients: list[Any], stop: asyncio.Event, outcomes: list[Outcome], accepted: list[str]) -> None:
    """One UA registering in a loop, answers crossing replicas, until ``stop`` (bounded by count too)."""
    for index in range(2000):
        if stop.is_set():
            return
        minting, verifying = clients[index % len(clients)], clients[(index + 1) % len(clients)]
        try:
            authorization, outcome = await attempt(minting, verifying)
        except grpc.RpcError as exc:
            outcomes.append(Outcome(f"challenge:{exc.code().name}", 0.0, time.monotonic()))
            continue
        outcomes.append(outcome)
        if outcome.verdict == "ACCEPT":
            accepted.append(authorization)
        await asyncio.sleep(0.005)


async def test_redis_killed_mid_load_then_restarted(
    redis_server: RedisServer, sipauth_process: Callable[..., SipauthProcess], nonce_keys_file: Path
) -> None:
    """Redis killed under load and restarted: no ACCEPT during the outage, ACCEPTs again within 5 s after it.

    Every call is answered within its deadline, challenges are still issued, and no sipauth process restarts.
    """
    deadline = 1.0
    settings = replica_settings({"url": redis_server.url, "timeout_ms": 200}, nonce_keys_file)
    replicas = [sipauth_process(settings, name=f"replica{index}") for index in range(2)]
    clients = [client(replica.target, timeout=deadline) for replica in replicas]
    outcomes: list[Outcome] = []
    accepted: list[str] = []
    try:
        stop = asyncio.Event()
        load = asyncio.gather(*(_load(clients, stop, outcomes, accepted) for _ in range(4)))
        await asyncio.sleep(0.7)
        redis_server.kill()
        killed = time.monotonic()
        await asyncio.sleep(1.2)
        restarted_at = time.monotonic()
        redis_server.start()
        restarted = time.monotonic()
        while time.monotonic() < restarted + 5.5:
            if any(o.verdict == "ACCEPT" and o.started >= restarted + 1.0 for o in outcomes):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await load
    finally:
        for sipauth in clients:
            await sipauth.close()
    assert all(replica.proc is not None and replica.proc.poll() is None for replica in replicas)
    during = [o for o in outcomes if o.started >= killed and o.started + o.seconds <= restarted_at]
    assert during, "no call was made during the outage"
    assert {o.verdict for o in during} == {"UNAVAILABLE"}
    assert all(o.seconds < deadline for o in outcomes), max(o.seconds for o in outcomes)
    assert not [o for o in outcomes if o.verdict.startswith("challenge:")]
    assert any(o.verdict == "ACCEPT" and o.started < killed for o in outcomes)
    first_accept = min(o.started + o.seconds for o in outcomes if o.verdict == "ACCEPT" and o.started >= restarted)
    assert first_accept - restarted < 5.0
    tail = [o for o in outcomes if o.started >= first_accept + 0.2]
    assert tail
    assert {o.verdict for o in tail} == {"ACCEPT"}


async def test_frozen_redis_answers_unavailable_in_time_then_recovers(
    redis_server: RedisServer, sipauth_process: Callable[..., SipauthProcess], nonce_keys_file: Path
) -> None:
    """Redis SIGSTOPped: UNAVAILABLE within the 200 ms Redis timeout while challenges work; SIGCONT: ACCEPT again."""
    replica = sipauth_process(replica_settings({"url": redis_server.url, "timeout_ms": 200}, nonce_keys_file))
    async with client(replica.target, timeout=2.0) as sipauth:
        assert (await attempt(sipauth, sipauth))[1].verdict == "ACCEPT"
        redis_server.freeze()
        try:
            answers = [answer(await challenge(sipauth)) for _ in range(10)]
            outcomes = await asyncio.gather(*(verify(sipauth, authorization) for authorization in answers))
            assert {o.verdict for o in outcomes} == {"UNAVAILABLE"}
            assert max(o.seconds for o in outcomes) < 0.6
        finally:
            redis_server.thaw()
        deadline = time.monotonic() + 5
        while (await attempt(sipauth, sipauth))[1].verdict != "ACCEPT":
            assert time.monotonic() < deadline, "no ACCEPT within 5 s of SIGCONT"
            await asyncio.sleep(0.05)


def _fallback_count() -> float:
    return REGISTRY.get_sample_value("sipauth_replay_fallback_decisions_total") or 0.0


async def test_local_fallback_decides_from_memory_loudly_and_recovers(
    redis_server: RedisServer, server_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """local_fallback: with Redis down, verdicts come from memory (fresh ACCEPT, replay STALE), loudly, then recover.

    Each fallback decision is logged at error level and counted, health stays SERVING, and once Redis is back
    the shared checks resume while uses recorded during the outage stay replays.
    """
    running = await server_factory(
        redis={"url": redis_server.url, "timeout_ms": 200, "failure_policy": "local_fallback"}
    )
    guard = running.app.replay
    assert isinstance(guard, FallbackReplayGuard)
    counted_before = _fallback_count()
    async with client(f"127.0.0.1:{running.port}", timeout=2.0) as sipauth:
        assert (await attempt(sipauth, sipauth))[1].verdict == "ACCEPT"
        assert guard.fallback_decisions == 0
        redis_server.kill()
        authorization, outcome = await attempt(sipauth, sipauth)
        assert outcome.verdict == "ACCEPT"
        replayed = await verify(sipauth, authorization)
        assert (replayed.verdict, replayed.reason) == ("STALE", "nonce_replayed")
        assert guard.degraded
        assert guard.fallback_decisions == 2
        assert _fallback_count() - counted_before == 2
        assert any(r.levelname == "ERROR" and "local_fallback" in r.getMessage() for r in caplog.records)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        redis_server.start()
        deadline = time.monotonic() + 5
        while guard.degraded:
            assert time.monotonic() < deadline, "the shared store was not used again within 5 s"
            await attempt(sipauth, sipauth)
            await asyncio.sleep(0.1)
        fallback_decisions = guard.fallback_decisions
        assert (await attempt(sipauth, sipauth))[1].verdict == "ACCEPT"
        assert guard.fallback_decisions == fallback_decisions
        with redis_server.client() as admin:
            assert admin.dbsize() >= 1
        assert (await verify(sipauth, authorization)).verdict == "STALE"
    assert any("reachable again" in r.getMessage() for r in caplog.records)
