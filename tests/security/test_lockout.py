"""Brute-force lockout: per user and IP, per IP, shared by replicas through Redis, lifted after the backoff."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipauth.app import RunningServer
from sipauth.lockout import Lockout, LockoutPolicy, MemoryLockoutStore
from sipauth_client import AsyncSipauthClient, auth_pb2
from tests.support.answers import answer_for
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import EXAMPLES

pytestmark = pytest.mark.security
URI = "sip:example.test"
LOCKOUT = {"threshold": 3, "ip_threshold": 100, "window_seconds": 60, "base_lock_seconds": 1, "max_lock_seconds": 4}


async def attempt(client: AsyncSipauthClient, user: str, password: str, ip: str) -> auth_pb2.VerifyResponseResponse:
    challenge = await client.issue_challenge(method="REGISTER")
    authorization = answer_for(challenge, username=user, password=password)
    return await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI, source_ip=ip)


async def test_lock_per_user_and_ip_shared_by_replicas(
    server_factory: Callable[..., Any], redis_server: RedisServer, nonce_keys_file: Path
) -> None:
    """Wrong answers for alice from one IP on two replicas lock that IP for alice only; the lock lifts after backoff."""
    settings = {"redis": {"url": redis_server.url}, "nonce_keys_file": nonce_keys_file, "lockout": LOCKOUT}
    one: RunningServer = await server_factory(**settings)
    two: RunningServer = await server_factory(**settings)
    async with (
        AsyncSipauthClient(f"127.0.0.1:{one.port}", timeout=5, retries=0) as a,
        AsyncSipauthClient(f"127.0.0.1:{two.port}", timeout=5, retries=0) as b,
    ):
        # Three failures, spread over both replicas: the counters are shared.
        for client in (a, b, a):
            wrong = await attempt(client, "alice", "guess", "192.0.2.10")
            assert (wrong.verdict, wrong.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")
        for client in (a, b):
            locked = await attempt(client, "alice", "wonderland", "192.0.2.10")
            assert (locked.verdict, locked.reason, locked.status_code) == (auth_pb2.VERDICT_LOCKED, "locked_out", 403)
            assert not locked.HasField("challenge")
        # Another IP, and another user from the locked IP, are not affected.
        assert (await attempt(b, "alice", "wonderland", "192.0.2.11")).verdict == auth_pb2.VERDICT_ACCEPT
        assert (await attempt(a, "bob", "builder", "192.0.2.10")).verdict == auth_pb2.VERDICT_ACCEPT
        await asyncio.sleep(1.2)
        assert (await attempt(b, "alice", "wonderland", "192.0.2.10")).verdict == auth_pb2.VERDICT_ACCEPT


async def test_backoff_doubles_and_success_resets() -> None:
    """Each new lock of a scope doubles (capped); a correct answer resets the user's counters but not the IP's."""
    now = [1000.0]
    store = MemoryLockoutStore(clock=lambda: now[0])
    policy = LockoutPolicy(threshold=2, ip_threshold=5, window=60, base_lock=10, max_lock=25)
    lockout = Lockout(policy, store, clock=lambda: now[0])
    assert await lockout.failed("r", "alice", "192.0.2.1") == []
    assert await lockout.failed("r", "alice", "192.0.2.1") == ["user_ip"]
    state = await lockout.check("r", "alice", "192.0.2.1")
    assert state is not None
    assert state.locked_until == pytest.approx(1010)
    now[0] = 1011
    assert await lockout.failed("r", "alice", "192.0.2.1") == []
    assert await lockout.failed("r", "alice", "192.0.2.1") == ["user_ip"]
    state = await lockout.check("r", "alice", "192.0.2.1")
    assert state is not None
    assert state.locked_until == pytest.approx(1031)  # 20 s: doubled
    now[0] = 1032
    assert await lockout.failed("r", "alice", "192.0.2.1") == ["ip"]  # 5th failure from the IP
    assert await lockout.failed("r", "alice", "192.0.2.1") == ["user_ip"]
    state = await lockout.check("r", "alice", "192.0.2.1")
    assert state is not None
    assert state.locked_until == pytest.approx(1057)  # capped at 25 s
    await lockout.succeeded("r", "alice", "192.0.2.1")
    after = await lockout.check("r", "alice", "192.0.2.1")
    assert after is not None
    assert after.locked(now[0])  # the IP lock stays: one good account does not launder an IP


async def test_trusted_networks_and_per_user_scope() -> None:
    """Trusted networks are never counted; the per-user scope is off by default and locks every source when on."""
    now = [0.0]
    trusted = LockoutPolicy(threshold=1, trusted_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),))
    lockout = Lockout(trusted, MemoryLockoutStore(clock=lambda: now[0]), clock=lambda: now[0])
    assert await lockout.failed("r", "alice", "10.1.2.3") == []
    assert await lockout.check("r", "alice", "10.1.2.3") is None
    default = Lockout(LockoutPolicy(threshold=100), MemoryLockoutStore(clock=lambda: now[0]), clock=lambda: now[0])
    for i in range(20):
        await default.failed("r", "alice", f"192.0.2.{i}")
    state = await default.check("r", "alice", "198.51.100.1")
    assert state is not None
    assert not state.locked(now[0])
    per_user = Lockout(LockoutPolicy(threshold=100, user_threshold=5), MemoryLockoutStore(clock=lambda: now[0]))
    for i in range(5):
        await per_user.failed("r", "alice", f"192.0.2.{i}")
    state = await per_user.check("r", "alice", "198.51.100.1")
    assert state is not None
    assert state.locked(now[0])


async def test_unlock_command_clears_a_lock(
    server_factory: Callable[..., Any], redis_server: RedisServer, tmp_path: Path
) -> None:
    """`sipauth unlock --user alice --ip ...` lifts a lock in Redis at once, with no restart."""
    lockout = {**LOCKOUT, "base_lock_seconds": 600, "max_lock_seconds": 600}
    server: RunningServer = await server_factory(redis={"url": redis_server.url}, lockout=lockout)
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        for _ in range(3):
            await attempt(client, "alice", "guess", "192.0.2.20")
        assert (await attempt(client, "alice", "wonderland", "192.0.2.20")).verdict == auth_pb2.VERDICT_LOCKED
        config = tmp_path / "sipauth.yaml"
        config.write_text(
            yaml.safe_dump({"users_file": str(EXAMPLES / "users.yaml"), "redis": {"url": redis_server.url}})
        )
        command = [sys.executable, "-m", "sipauth", "unlock", "--config", str(config), "--user", "alice"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert (await attempt(client, "alice", "wonderland", "192.0.2.20")).verdict == auth_pb2.VERDICT_ACCEPT
