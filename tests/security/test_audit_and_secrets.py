"""The audit trail (one JSON line per decision, read by fail2ban) and secrets never appearing in any output."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sipauth.digest import Algorithm, compute_ha1
from sipauth_client import AsyncSipauthClient, answer_challenge, auth_pb2, parse_challenge
from tests.support.answers import answer_for
from tests.support.procs import require_binary
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.security
ROOT = Path(__file__).resolve().parents[2]
URI = "sip:example.test"
PASSWORDS = {"alice": "wonderland-Secret-1", "bob": "builder-Secret-2", "carol": "carol-Secret-3"}
NONCE_KEY = "nonce-key-that-must-never-appear-in-any-log-0123456789"


@pytest.fixture
def secret_users(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(
        "users:\n"
        f"  alice: {{password: {PASSWORDS['alice']}}}\n"
        f"  bob: {{ha1: {{MD5: {compute_ha1(Algorithm.MD5, 'bob', 'example.test', PASSWORDS['bob'])}, "
        f"SHA-256: {compute_ha1(Algorithm.SHA_256, 'bob', 'example.test', PASSWORDS['bob'])}}}}}\n"
        f"  carol: {{password: {PASSWORDS['carol']}, disabled: true}}\n"
    )
    return path


async def _every_verdict_path(client: AsyncSipauthClient) -> set[str]:
    """Drive ACCEPT, every REJECT reason, STALE, INVALID, LOCKED, FORBIDDEN and faults; return the reasons seen."""
    seen: set[str] = set()

    async def verify(authorization: str, **kw: Any) -> None:
        try:
            result = await client.verify_response(
                authorization=authorization,
                method=kw.pop("method", "REGISTER"),
                request_uri=kw.pop("request_uri", URI),
                source_ip=kw.pop("source_ip", "192.0.2.50"),
                **kw,
            )
        except grpc.aio.AioRpcError as exc:
            seen.add(exc.code().name)
        else:
            seen.add(result.reason or auth_pb2.Verdict.Name(result.verdict))

    challenge = await client.issue_challenge(method="REGISTER")
    for user in ("alice", "bob"):
        ok = answer_for(challenge, username=user, password=PASSWORDS[user], cnonce=f"c-{user}")
        await verify(ok)  # ACCEPT
        await verify(ok)  # STALE nonce_replayed
    await verify(answer_for(challenge, username="carol", password=PASSWORDS["carol"]))  # FORBIDDEN
    await verify(answer_for(challenge, username="alice", password="not-" + PASSWORDS["alice"], nc=5))
    await verify(answer_for(challenge, username="nobody", password=PASSWORDS["alice"]))  # unknown user
    await verify(answer_for(challenge, username="alice", password=PASSWORDS["alice"], nc=7), request_uri="sip:x")
    value = challenge.header_values[0]
    params = parse_challenge(value)
    forged = value.replace(params.nonce, params.nonce[:-2] + ("AA" if params.nonce[-2:] != "AA" else "BB"))
    await verify(answer_for(forged, username="alice", password=PASSWORDS["alice"]))  # nonce_forged
    downgrade = type(params)(realm=params.realm, nonce=params.nonce, algorithm="MD5", qop=("auth",))
    await verify(answer_challenge(downgrade, username="alice", password=PASSWORDS["alice"], method="REGISTER", uri=URI))
    no_qop = type(params)(realm=params.realm, nonce=params.nonce, algorithm=params.algorithm)
    await verify(answer_challenge(no_qop, username="alice", password=PASSWORDS["alice"], method="REGISTER", uri=URI))
    await verify(answer_for(challenge, username="alice", password=PASSWORDS["alice"]).replace("example.test", "x.y"))
    await verify('Digest username="alice", realm=')  # INVALID malformed
    await verify("")  # credentials_missing
    await verify("x", method="")  # INVALID_ARGUMENT
    for nc in range(10, 14):  # lockout threshold 3 from this IP
        await verify(answer_for(challenge, username="bob", password="wrong", nc=nc), source_ip="192.0.2.99")
    await verify(answer_for(challenge, username="bob", password=PASSWORDS["bob"], nc=20), source_ip="192.0.2.99")
    return seen


async def test_no_secret_in_any_output(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer, secret_users: Path, tmp_path: Path
) -> None:
    """Every verdict path at DEBUG level: no password, HA1 or nonce key appears in the logs or the audit file."""
    keys = tmp_path / "nonce-keys"
    keys.write_text(NONCE_KEY + "\n")
    audit = tmp_path / "audit.log"
    proc = sipauth_process(
        {
            "users_file": str(secret_users),
            "nonce_keys_file": str(keys),
            "redis": {"url": redis_server.url},
            "log_level": "debug",
            "audit_file": str(audit),
            "lockout": {"threshold": 3, "base_lock_seconds": 60},
        }
    )
    async with AsyncSipauthClient(proc.target, timeout=5, retries=0) as client:
        seen = await _every_verdict_path(client)
    assert {
        "VERDICT_ACCEPT",
        "nonce_replayed",
        "account_disabled",
        "bad_credentials",
        "uri_mismatch",
        "nonce_forged",
        "algorithm_not_offered",
        "qop_missing",
        "realm_mismatch",
        "malformed",
        "credentials_missing",
        "INVALID_ARGUMENT",
        "locked_out",
    } <= seen
    assert proc.stop() == 0
    output = "".join(proc.output) + audit.read_text()
    secrets = [*PASSWORDS.values(), NONCE_KEY]
    for user, password in PASSWORDS.items():
        for algorithm in (Algorithm.MD5, Algorithm.SHA_256, Algorithm.SHA_512_256):
            secrets.append(compute_ha1(algorithm, user, "example.test", password))
    leaked = [secret for secret in secrets if secret in output]
    assert leaked == []
    assert '"level": "debug"' in output or '"level": "info"' in output


async def test_audit_lines_and_fail2ban_filter(sipauth_process: Callable[..., SipauthProcess], tmp_path: Path) -> None:
    """Each decision is one JSON audit line with the true reason; fail2ban's own regex tool matches the failures."""
    audit = tmp_path / "audit.log"
    proc = sipauth_process({"audit_file": str(audit)})
    async with AsyncSipauthClient(proc.target, timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        for user, password, nc in (("alice", "wonderland", 1), ("alice", "bad", 2), ("ghost", "x", 3)):
            authorization = answer_for(challenge, username=user, password=password, nc=nc)
            await client.verify_response(
                authorization=authorization, method="REGISTER", request_uri=URI, source_ip="203.0.113.7"
            )
    proc.stop()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["verdict"], e["reason"], e["detail"], e["user"]) for e in lines] == [
        ("accept", "", "", "alice"),
        ("reject", "bad_credentials", "wrong_password", "alice"),
        ("reject", "bad_credentials", "unknown_user", "ghost"),
    ]
    for entry in lines:
        assert entry["logger"] == "sipauth.audit"
        assert entry["source_ip"] == "203.0.113.7"
        assert entry["method"] == "REGISTER"
        assert entry["latency_ms"] >= 0
        assert entry["request_id"]
    regex = require_binary("fail2ban-regex", "fail2ban")
    result = subprocess.run(
        [regex, str(audit), str(ROOT / "deploy" / "fail2ban" / "filter.d" / "sipauth.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failregex: 2 total" in result.stdout
    assert "3 lines, 0 ignored, 2 matched, 1 missed" in result.stdout
