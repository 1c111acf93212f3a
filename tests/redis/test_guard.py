"""The Redis replay guard against one real redis-server: semantics, faults, TLS/ACL, memory, no writes on challenge."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from sipauth.app import build_app
from sipauth.authenticator import ChallengeRequest, Verdict, VerifyRequest
from sipauth.config import load_settings
from sipauth.errors import ReplayStoreUnavailable
from sipauth.replay.redis import CONSUME_SCRIPT, RedisEndpoint, RedisReplayGuard, connect, replay_key
from tests.conftest import example_settings
from tests.redis.traffic import URI, answer, attempt, challenge, client, verify
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

#: The ACL rules sipauth needs, and nothing more (docs/redis.md quotes them).
# Replay: EVALSHA/EVAL (+SCRIPT LOAD after NOSCRIPT) running GET and SET; health: PING.
# Lockout: HMGET (state), the counting script's HMGET/HSET/PEXPIRE, DEL (reset), SCAN (`sipauth unlock`).
MINIMAL_ACL = (
    "~sipauth:* resetchannels -@all +evalsha +eval +script|load +ping +get +set +hmget +hset +pexpire +del +scan"
)


def guard_for(server: RedisServer, timeout: float = 0.25, **options: Any) -> RedisReplayGuard:
    """A guard on ``server`` with the given call timeout."""
    return connect(RedisEndpoint(url=server.url, timeout=timeout, **options))


def replay_id() -> str:
    """An id shaped like the real ones (a 16-byte MAC in unpadded base64url)."""
    return base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


async def test_nc_must_increase_and_key_lives_as_long_as_the_nonce(redis_server: RedisServer) -> None:
    """Each nc is accepted once and only upwards, in one hash-tagged key whose TTL is the nonce's remaining life."""
    guard = guard_for(redis_server)
    try:
        rid = replay_id()
        assert await guard.consume(rid, 1, 30)
        assert not await guard.consume(rid, 1, 30)
        assert await guard.consume(rid, 3, 30)
        assert not await guard.consume(rid, 2, 30)
        with redis_server.client() as admin:
            assert admin.keys("*") == [replay_key(rid).encode()]
            assert replay_key(rid) == f"sipauth:n:{{{rid}}}"
            assert 29_000 < admin.pttl(replay_key(rid)) <= 30_000
    finally:
        await guard.close()


async def test_one_time_use_is_accepted_once(redis_server: RedisServer) -> None:
    """Without nc (one-time mode or no qop) a nonce is accepted once; no later nc revives it."""
    guard = guard_for(redis_server)
    try:
        rid = replay_id()
        assert await guard.consume(rid, None, 30)
        assert not await guard.consume(rid, None, 30)
        assert not await guard.consume(rid, 5, 30)
    finally:
        await guard.close()


async def test_concurrent_copies_consume_once(redis_server: RedisServer) -> None:
    """200 concurrent consumes of one (nonce, nc) through a pool of 16 connections: exactly one is fresh."""
    guard = guard_for(redis_server, timeout=2.0, max_connections=16)
    try:
        rid = replay_id()
        results = await asyncio.gather(*(guard.consume(rid, 1, 30) for _ in range(200)))
        assert results.count(True) == 1
    finally:
        await guard.close()


async def test_frozen_redis_fails_within_the_timeout_and_recovers(redis_server: RedisServer) -> None:
    """SIGSTOP: every consume raises ReplayStoreUnavailable within the timeout; SIGCONT: consumes work again."""
    guard = guard_for(redis_server, timeout=0.2)
    try:
        assert await guard.consume(replay_id(), 1, 30)
        redis_server.freeze()
        started = time.monotonic()
        results = await asyncio.gather(*(guard.consume(replay_id(), 1, 30) for _ in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(result, ReplayStoreUnavailable) for result in results)
        assert elapsed < 0.5
        assert not await guard.ping()
        redis_server.thaw()
        assert await guard.ping()
        assert await guard.consume(replay_id(), 1, 30)
    finally:
        redis_server.thaw()
        await guard.close()


def acl_file(folder: Path, password: str) -> Path:
    """An ACL file: the default user for the test's own checks, and ``sipauth`` with MINIMAL_ACL."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "users.acl"
    path.write_text(f"user default on nopass ~* &* +@all\nuser sipauth on >{password} {MINIMAL_ACL}\n")
    return path


def _tls_redis(tmp_path: Path, password: str) -> tuple[RedisServer, int, trustme.CA, Path]:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("sipauth")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    server_cert.cert_chain_pems[0].write_to_path(str(certs / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(certs / "server.key"))
    client_cert.cert_chain_pems[0].write_to_path(str(certs / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(certs / "client.key"))
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis-tls",
        extra_args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certs / "server.pem"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.pem"),
            "--tls-auth-clients", "yes",
            "--aclfile", str(acl_file(tmp_path / "acl", password)),
        ),
    ).start()  # fmt: skip
    return server, tls_port, ca, certs


async def test_tls_and_acl_user_with_minimal_rules(tmp_path: Path) -> None:
    """Over rediss:// with a client certificate and an ACL user held to MINIMAL_ACL, sipauth accepts once, then refuses.

    Lockout counting, reset and unlock work under the same rules; the user is denied anything else
    (KEYS), so the rules are as small as they look.
    """
    password = "redis-" + os.urandom(8).hex()
    server, tls_port, _ca, certs = _tls_redis(tmp_path, password)
    try:
        (tmp_path / "redis-password").write_text(password + "\n")
        settings_file = tmp_path / "sipauth.yaml"
        settings_file.write_text(
            "users_file: " + str(Path(__file__).resolve().parents[2] / "examples" / "users.yaml") + "\n"
            "redis:\n"
            f"  url: rediss://sipauth@127.0.0.1:{tls_port}/0\n"
            "  password_file: redis-password\n"
            f"  tls_ca_file: {certs / 'ca.pem'}\n"
            "  tls_cert_file: certs/client.pem\n"
            "  tls_key_file: certs/client.key\n"
        )
        app = build_app(load_settings(settings_file, environ={}))
        try:
            issued = app.authenticator.issue_challenge(ChallengeRequest(method="REGISTER"))
            authorization = answer(issued.header_values[0])
            ip = "192.0.2.1"
            wrong = re.sub(r'response="(.)', lambda m: 'response="' + ("0" if m[1] != "0" else "1"), authorization)
            failed = await app.authenticator.verify(
                VerifyRequest(method="REGISTER", request_uri=URI, authorization=wrong, source_ip=ip)
            )
            assert (failed.verdict, failed.reason) == (Verdict.REJECT, "bad_credentials")
            request = VerifyRequest(method="REGISTER", request_uri=URI, authorization=authorization, source_ip=ip)
            assert (await app.authenticator.verify(request)).verdict is Verdict.ACCEPT
            lockout = app.authenticator.lockout
            assert lockout is not None
            assert await lockout.unlock(realm="example.test", source_ip=ip) == 1  # the IP's counter
            replayed = await app.authenticator.verify(request)
            assert (replayed.verdict, replayed.reason) == (Verdict.STALE, "nonce_replayed")
            assert await app.replay.ping()
        finally:
            await app.close()
        with server.client() as admin:
            assert len(admin.keys("sipauth:n:*")) == 1
        restricted = redis.Redis(
            host="127.0.0.1",
            port=tls_port,
            username="sipauth",
            password=password,
            ssl=True,
            ssl_ca_certs=str(certs / "ca.pem"),
            ssl_certfile=str(certs / "client.pem"),
            ssl_keyfile=str(certs / "client.key"),
        )
        with restricted, pytest.raises(redis.exceptions.NoPermissionError):
            restricted.keys("*")
    finally:
        server.stop()


async def test_wrong_password_is_unavailable_and_never_shown(tmp_path: Path) -> None:
    """A refused login is ReplayStoreUnavailable, and the password appears in no error text."""
    password = "hunter2-" + os.urandom(8).hex()
    server = RedisServer(
        tmp_path / "redis", extra_args=("--aclfile", str(acl_file(tmp_path / "acl", "right-one")))
    ).start()
    try:
        guard = connect(
            RedisEndpoint(url=f"redis://127.0.0.1:{server.port}/0", username="sipauth", password=password, timeout=1)
        )
        with pytest.raises(ReplayStoreUnavailable) as caught:
            await guard.consume(replay_id(), 1, 30)
        await guard.close()
        chain: list[BaseException] = [caught.value]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)  # type: ignore[arg-type]
        assert all(password not in f"{error!s} {error!r}" for error in chain)
        assert password not in repr(RedisEndpoint(password=password))
    finally:
        server.stop()


def _used_memory(admin: redis.Redis) -> int:
    return int(admin.info("memory")["used_memory"])


async def test_memory_per_accepted_nonce(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    """20 000 nonces accepted by the consume script cost Redis under 256 bytes each, hash tables included.

    The figure printed is the one docs/redis.md uses for sizing.
    """
    count = 20_000
    guard = guard_for(redis_server, timeout=5.0)
    try:
        with redis_server.client() as admin:
            assert await guard.consume(replay_id(), 1, 300)
            admin.flushall()
            before = _used_memory(admin)
            # The same script, pipelined: the Python client, not Redis, would otherwise set the pace.
            sha = admin.script_load(CONSUME_SCRIPT)
            pipe = admin.pipeline(transaction=False)
            for _ in range(count):
                pipe.evalsha(sha, 1, replay_key(replay_id()), 1, 300_000)
            assert pipe.execute() == [1] * count
            after = _used_memory(admin)
            assert admin.dbsize() == count
            key_usage = admin.memory_usage(admin.randomkey())
        per_nonce = (after - before) / count
        with capsys.disabled():
            print(
                f"\nredis used_memory per accepted nonce: {per_nonce:.1f} bytes (MEMORY USAGE of one key: {key_usage})"
            )
        assert 40 < per_nonce < 256
    finally:
        await guard.close()


def _command_calls(admin: redis.Redis) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in admin.info("commandstats").items()}


async def test_challenges_write_nothing_to_redis(redis_server: RedisServer, server_factory: Callable[..., Any]) -> None:
    """100 000 IssueChallenge in process and 2 000 over gRPC, wired to Redis, write nothing there.

    used_memory stays flat (under 64 KiB of drift where 100 000 accepted nonces take ~15 MB), there is no
    key, and Redis saw no command but connection set-up and PING.
    """
    redis_settings = {"url": redis_server.url, "timeout_ms": 250}
    app = build_app(example_settings(redis=redis_settings))
    with redis_server.client() as admin:
        admin.config_resetstat()
        memory_before = _used_memory(admin)
        try:
            request = ChallengeRequest(method="INVITE", request_uri="sip:bob@example.test")
            for _ in range(100_000):
                app.authenticator.issue_challenge(request)
        finally:
            await app.close()
        # Redis's own housekeeping (client buffer resizing) moves used_memory by a few KiB when idle.
        assert abs(_used_memory(admin) - memory_before) < 64 * 1024
        running = await server_factory(redis=redis_settings)
        async with client(f"127.0.0.1:{running.port}") as sipauth:
            for _ in range(20):
                await asyncio.gather(*(challenge(sipauth) for _ in range(100)))
        assert admin.dbsize() == 0
        assert admin.info("keyspace") == {}
        commands = {name.removeprefix("cmdstat_") for name in _command_calls(admin)}
        # Connection set-up (HELLO), the health monitor's PING, and this test's own INFO / CONFIG RESETSTAT / DBSIZE.
        assert commands <= {"hello", "ping", "info", "config|resetstat", "dbsize", "client|setinfo"}, commands


async def test_verify_through_grpc_uses_one_script_call(
    redis_server: RedisServer, server_factory: Callable[..., Any]
) -> None:
    """Once the script is loaded, an ACCEPT over gRPC costs one script call in Redis, and its replay one more."""
    running = await server_factory(redis={"url": redis_server.url})
    async with client(f"127.0.0.1:{running.port}") as sipauth:
        # The first ever check meets NOSCRIPT and loads the script: leave that out of the count.
        assert (await attempt(sipauth, sipauth))[1].verdict == "ACCEPT"
        authorization = answer(await challenge(sipauth))
        with redis_server.client() as admin:
            admin.config_resetstat()
            assert (await verify(sipauth, authorization)).verdict == "ACCEPT"
            assert (await verify(sipauth, authorization)).verdict == "STALE"
            calls = _command_calls(admin)
    assert calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0) == 2
