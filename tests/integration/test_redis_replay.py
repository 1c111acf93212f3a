"""Replay protection on a real redis-server, shared by several sipauth processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipauth.app import RunningServer
from sipauth.errors import ReplayStoreUnavailable
from sipauth.replay.redis import RedisEndpoint, connect
from sipauth_client import AsyncSipauthClient, answer_challenge, auth_pb2, parse_challenge
from tests.support.answers import answer_for
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.redis
URI = "sip:example.test"


async def _verify(client: AsyncSipauthClient, authorization: str) -> auth_pb2.VerifyResponseResponse:
    return await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)


async def test_same_nonce_and_nc_twice_is_stale(
    server_factory: Callable[..., Any], redis_server: RedisServer, nonce_keys_file: Path
) -> None:
    """The same (nonce, nc) twice: the first is ACCEPTed, the second is STALE nonce_replayed."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url}, nonce_keys_file=nonce_keys_file)
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        authorization = answer_for(challenge, username="alice", password="wonderland")
        first, second = await _verify(client, authorization), await _verify(client, authorization)
    assert first.verdict == auth_pb2.VERDICT_ACCEPT
    assert (second.verdict, second.reason) == (auth_pb2.VERDICT_STALE, "nonce_replayed")
    assert all("stale=true" in v for v in second.challenge.header_values)
    assert redis_server.client().dbsize() == 1


async def test_nc_sequence(server_factory: Callable[..., Any], redis_server: RedisServer) -> None:
    """Nc 1 then 2 are both ACCEPTed; 2 again is STALE (strictly increasing nc per nonce)."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        verdicts = []
        for nc in (1, 2, 2):
            authorization = answer_for(challenge, username="alice", password="wonderland", nc=nc, cnonce=f"c{nc}")
            verdicts.append((await _verify(client, authorization)).verdict)
    assert verdicts == [auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_STALE]


async def test_two_processes_share_nonces_and_replay_state(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer, nonce_keys_file: Path
) -> None:
    """Two processes on one Redis: nonces cross, and of 50 concurrent copies of one answer one is ACCEPTed."""
    settings = {"redis": {"url": redis_server.url}, "nonce_keys_file": str(nonce_keys_file)}
    one, two = sipauth_process(settings, "one"), sipauth_process(settings, "two")
    async with (
        AsyncSipauthClient(one.target, timeout=10, retries=0) as a,
        AsyncSipauthClient(two.target, timeout=10, retries=0) as b,
    ):
        crossing = await a.issue_challenge(method="REGISTER")
        crossed = await _verify(b, answer_for(crossing, username="bob", password="builder"))
        assert crossed.verdict == auth_pb2.VERDICT_ACCEPT

        challenge = await b.issue_challenge(method="REGISTER")
        authorization = answer_for(challenge, username="alice", password="wonderland")
        results = await asyncio.gather(*(_verify((a, b)[i % 2], authorization) for i in range(50)))
    verdicts = [r.verdict for r in results]
    assert verdicts.count(auth_pb2.VERDICT_ACCEPT) == 1
    assert verdicts.count(auth_pb2.VERDICT_STALE) == 49
    assert {r.reason for r in results if r.verdict == auth_pb2.VERDICT_STALE} == {"nonce_replayed"}


def _command_calls(redis: Any) -> dict[str, int]:
    stats = redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_issue_challenge_sends_no_redis_command(
    server_factory: Callable[..., Any], redis_server: RedisServer
) -> None:
    """500 IssueChallenge calls run no Redis command at all (Redis's own command statistics)."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        await client.issue_challenge(method="REGISTER")  # warm the channel
        redis = redis_server.client()
        before = _command_calls(redis)
        for _ in range(500):
            await client.issue_challenge(method="INVITE", proxy=True)
        after = _command_calls(redis)
        # The health monitor pings every 2 s, and the INFO we send counts itself: ignore both.
        changed = {
            name: after[name] - before.get(name, 0)
            for name in after
            if after[name] != before.get(name, 0) and name not in {"ping", "info"}
        }
        assert changed == {}
        assert redis_server.client().dbsize() == 0

        # The same statistics do see the one script run per ACCEPT (after the first, which loads it).
        for user, password in (("alice", "wonderland"), ("bob", "builder")):
            after = _command_calls(redis)
            challenge = await client.issue_challenge(method="REGISTER")
            await _verify(client, answer_for(challenge, username=user, password=password))
        final = _command_calls(redis)
        scripts = sum(final.get(n, 0) - after.get(n, 0) for n in ("evalsha", "eval"))
        assert scripts == 1


async def test_replay_key_expires_with_the_nonce(server_factory: Callable[..., Any], redis_server: RedisServer) -> None:
    """The replay key's TTL is the nonce's remaining life, so Redis forgets it when it could no longer be replayed."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url}, policy={"nonce_ttl_seconds": 30})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        await _verify(client, answer_for(challenge, username="alice", password="wonderland"))
    redis = redis_server.client()
    (key,) = redis.keys("*")
    assert key.startswith(b"sipauth:n:{")
    assert 0 < redis.pttl(key) <= 30_000


async def test_answer_without_qop_is_single_use_on_redis(
    server_factory: Callable[..., Any], redis_server: RedisServer
) -> None:
    """On the Redis path too, an accepted qop-less answer re-sent with a higher nc attached is a replay."""
    server: RunningServer = await server_factory(redis={"url": redis_server.url}, policy={"allow_qop_less": True})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER", algorithms=["SHA-256"])
        params = parse_challenge(challenge.header_values[0])
        no_qop = answer_challenge(
            type(params)(realm=params.realm, nonce=params.nonce, algorithm=params.algorithm),
            username="alice",
            password="wonderland",
            method="REGISTER",
            uri=URI,
        )
        verdicts = [(await _verify(client, no_qop + f", nc={nc:08x}")).verdict for nc in (1, 2, 3)]
    assert verdicts == [auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_STALE, auth_pb2.VERDICT_STALE]


async def test_concurrent_consumes_share_one_connection_and_keep_their_own_answers(redis_server: RedisServer) -> None:
    """60 concurrent consumes (30 nonces, each twice, with reads beside): 30 fresh, 30 replays, on one connection."""
    guard = connect(RedisEndpoint(url=redis_server.url, timeout=2.0))
    pool = guard.client.connection_pool
    made = 0
    make_connection = pool.make_connection

    def counting() -> Any:
        nonlocal made
        made += 1
        return make_connection()

    pool.make_connection = counting
    redis_server.client().hset("sipauth:probe", mapping={"a": "1"})
    try:
        results = await asyncio.gather(
            *(guard.consume_reading(f"nonce-{i % 30}", 1, 60, ["sipauth:probe"], ["a", "b"]) for i in range(60))
        )
    finally:
        await guard.close()
    fresh = [f for f, _ in results]
    assert fresh.count(True) == 30
    assert all(fresh[i] != fresh[i + 30] for i in range(30))  # of each pair, exactly one was first
    assert all(reads == [[b"1", None]] for _, reads in results)
    assert made <= 2  # the calls' connection, and the pool's for SCRIPT LOAD (once, on a fresh Redis)


async def test_concurrent_consumes_survive_a_script_flush(redis_server: RedisServer) -> None:
    """SCRIPT FLUSH (as after a Redis restart): concurrent calls get NOSCRIPT, the script is loaded, all answer."""
    guard = connect(RedisEndpoint(url=redis_server.url, timeout=2.0))
    try:
        assert await guard.consume("warm", 1, 60)
        redis_server.client().script_flush()
        results = await asyncio.gather(*(guard.consume(f"after-flush-{i}", 1, 60) for i in range(20)))
        assert results == [True] * 20
        assert await guard.consume("after-flush-0", 1, 60) is False
    finally:
        await guard.close()


async def test_waiting_consumes_all_fail_cleanly_when_redis_is_gone(redis_server: RedisServer) -> None:
    """Redis stopped: every waiting call fails with ReplayStoreUnavailable (none hangs, none repeated); back: fine."""
    guard = connect(RedisEndpoint(url=redis_server.url, timeout=0.5))
    try:
        assert await guard.consume("before", 1, 60)
        redis_server.stop()
        outcomes = await asyncio.gather(*(guard.consume(f"gone-{i}", 1, 60) for i in range(20)), return_exceptions=True)
        assert all(isinstance(outcome, ReplayStoreUnavailable) for outcome in outcomes), outcomes
        redis_server.start()
        assert await guard.consume("after", 1, 60)
    finally:
        await guard.close()
