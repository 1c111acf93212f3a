"""Replay state behind Redis Sentinel: the master is found through Sentinel and a failover accepts no replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipauth.replay.redis import RedisEndpoint, connect
from tests.redis.traffic import Outcome, attempt, client, verify
from tests.support.redis_sentinel import RedisSentinel
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.redis


async def test_guard_finds_the_master_through_sentinel(sentinel: RedisSentinel) -> None:
    """Given only the Sentinel, the guard records on the master; with wait_replicas=1 the replica has it by then."""
    guard = connect(
        RedisEndpoint(
            mode="sentinel",
            sentinels=(("127.0.0.1", sentinel.sentinel_port),),
            master_name=sentinel.master_name,
            timeout=1.0,
            wait_replicas=1,
        )
    )
    try:
        assert await guard.consume("sentinel-nonce", 1, 30)
        with sentinel.replica().client() as replica:
            assert replica.get("sipauth:n:{sentinel-nonce}") == b"1"
        assert not await guard.consume("sentinel-nonce", 1, 30)
        assert await guard.ping()
    finally:
        await guard.close()


async def test_failover_during_traffic_accepts_no_replay_and_resumes(
    sentinel: RedisSentinel, sipauth_process: Callable[..., SipauthProcess], nonce_keys_file: Path
) -> None:
    """A failover under traffic: every accepted answer replayed afterwards is refused, and ACCEPTs resume."""
    settings = {
        "redis": {
            "mode": "sentinel",
            "sentinels": [sentinel.sentinel_address],
            "master_name": sentinel.master_name,
            "timeout_ms": 300,
            "wait_replicas": 1,
        },
        "nonce_keys_file": str(nonce_keys_file),
        "log_level": "warning",
    }
    replica = sipauth_process(settings)
    accepted: list[str] = []
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        async with client(replica.target, timeout=1.0) as sipauth:
            for _ in range(3000):
                if stop.is_set():
                    return
                authorization, outcome = await attempt(sipauth, sipauth)
                outcomes.append(outcome)
                if outcome.verdict == "ACCEPT":
                    accepted.append(authorization)
                await asyncio.sleep(0.01)

    loads = [asyncio.create_task(traffic()) for _ in range(3)]
    try:
        await asyncio.sleep(0.5)
        old_master = sentinel.master()
        before_failover = len(accepted)
        assert before_failover > 0
        await asyncio.to_thread(sentinel.failover)
        failed_over = time.monotonic()
        # Sentinel makes the old master a replica of the new one ~10 s later; wait_replicas=1 waits for that.
        deadline = failed_over + 20
        while time.monotonic() < deadline:
            if any(o.verdict == "ACCEPT" and o.started > failed_over + 0.5 for o in outcomes):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*loads)
    assert sentinel.master().port != old_master.port
    resumed = [o for o in outcomes if o.verdict == "ACCEPT" and o.started > failed_over + 0.5]
    assert resumed, "no ACCEPT on the new master within 20 s"
    assert {o.verdict for o in outcomes} <= {"ACCEPT", "UNAVAILABLE"}
    async with client(replica.target, timeout=2.0) as sipauth:
        replays = await asyncio.gather(*(verify(sipauth, authorization) for authorization in accepted))
    assert [o.verdict for o in replays if o.verdict != "STALE"] == []
