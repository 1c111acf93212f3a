"""Nonce key rotation across two replicas on a shared Redis, with traffic flowing: the procedure of docs/redis.md."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sipauth.app import RunningServer
from tests.redis.traffic import Outcome, answer, attempt, challenge, client, verify
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

NONCE_TTL = 3


async def test_rotation_with_traffic_rejects_nothing(
    redis_server: RedisServer, server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """Rolling restarts [old] -> [old, new] -> [new, old] -> (nonce TTL) -> [new] with answers crossing replicas.

    One replica at a time, traffic flowing: zero REJECT, and old-key nonces keep verifying until the key is dropped.
    """
    old, new = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    files = [tmp_path / "replica0-keys", tmp_path / "replica1-keys"]

    async def start(index: int, keys: list[str]) -> RunningServer:
        files[index].write_text("\n".join(keys) + "\n")
        running: RunningServer = await server_factory(
            redis={"url": redis_server.url},
            nonce_keys_file=files[index],
            policy={"nonce_ttl_seconds": NONCE_TTL, "algorithms": ["SHA-256", "MD5"], "qop": ["auth"]},
        )
        return running

    replicas: list[RunningServer | None] = [await start(0, [old]), await start(1, [old])]
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def traffic(offset: int) -> None:
        for index in range(5000):
            if stop.is_set():
                return
            live = [r for r in replicas if r is not None]
            minting, verifying = live[(index + offset) % len(live)], live[(index + offset + 1) % len(live)]
            async with client(f"127.0.0.1:{minting.port}") as a, client(f"127.0.0.1:{verifying.port}") as b:
                try:
                    outcomes.append((await attempt(a, b))[1])
                except grpc.RpcError as exc:  # the challenge met a replica going down
                    outcomes.append(Outcome(exc.code().name, 0.0, 0.0))
            await asyncio.sleep(0.005)

    async def roll(keys: list[str]) -> None:
        for index in range(2):
            running = replicas[index]
            assert running is not None
            replicas[index] = None  # the proxy stops sending to a replica that is going down
            await running.stop(1.0)
            await asyncio.sleep(0.1)
            replicas[index] = await start(index, keys)
            await asyncio.sleep(0.2)

    loads = [asyncio.create_task(traffic(offset)) for offset in range(2)]
    try:
        await asyncio.sleep(0.3)
        first = replicas[0]
        assert first is not None
        await roll([old, new])  # 1. every replica verifies the new key
        first = replicas[0]
        assert first is not None
        async with client(f"127.0.0.1:{first.port}") as sipauth:
            minted_with_old = await challenge(sipauth)
        await roll([new, old])  # 2. every replica mints with it
        second = replicas[1]
        assert second is not None
        async with client(f"127.0.0.1:{second.port}") as sipauth:
            assert (await verify(sipauth, answer(minted_with_old))).verdict == "ACCEPT"
            minted_with_new = await challenge(sipauth)
        await asyncio.sleep(NONCE_TTL)  # 3. the last nonce of the old key has expired
        await roll([new])  # 4. the old key is dropped
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*loads)
    first = replicas[0]
    assert first is not None
    verdicts = [o.verdict for o in outcomes]
    assert verdicts.count("ACCEPT") > 50
    counts = {v: verdicts.count(v) for v in set(verdicts)}
    # A call in flight to a replica as it stops gets UNAVAILABLE or CANCELLED (a proxy retries it
    # elsewhere); what rotation could cause is a REJECT (nonce_forged) or a STALE, and there is none.
    assert set(verdicts) <= {"ACCEPT", "UNAVAILABLE", "CANCELLED"}, counts
    assert len(verdicts) - verdicts.count("ACCEPT") <= 8, counts
    async with client(f"127.0.0.1:{first.port}") as sipauth:
        # Only the dropped key makes a nonce unknown: a fresh new-key nonce answered late is merely stale.
        assert (await verify(sipauth, answer(minted_with_new))).verdict == "STALE"
        assert (await verify(sipauth, answer(minted_with_old))).reason == "nonce_forged"
