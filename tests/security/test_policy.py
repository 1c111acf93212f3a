"""Per-realm algorithm policy (MD5 switched off) and userhash logins."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from sipauth.app import RunningServer
from sipauth_client import AsyncSipauthClient, answer_challenge, auth_pb2, parse_challenge
from tests.support.answers import answer_for

pytestmark = pytest.mark.security
URI = "sip:secure.test"


async def test_md5_switched_off_for_a_realm(server_factory: Callable[..., Any]) -> None:
    """A realm without MD5 offers no MD5 and REJECTs an MD5 answer, while the default realm still offers it."""
    server: RunningServer = await server_factory(realms={"secure.test": {"algorithms": ["SHA-256", "SHA-512-256"]}})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        secure = await client.issue_challenge(method="INVITE", realm="secure.test", proxy=True)
        offered = [parse_challenge(v).algorithm for v in secure.header_values]
        assert offered == ["SHA-256", "SHA-512-256"]
        assert not any("MD5" in v for v in secure.header_values)
        default = await client.issue_challenge(method="INVITE", proxy=True)
        assert "MD5" in [parse_challenge(v).algorithm for v in default.header_values]

        # An MD5 answer on a nonce of the realm: refused whatever the password.
        params = parse_challenge(secure.header_values[0])
        md5 = type(params)(realm="secure.test", nonce=params.nonce, algorithm="MD5", qop=("auth",))
        authorization = answer_challenge(md5, username="alice", password="wonderland", method="INVITE", uri=URI)
        verdict = await client.verify_response(
            authorization=authorization, method="INVITE", request_uri=URI, realm="secure.test", proxy=True
        )
        assert (verdict.verdict, verdict.reason, verdict.status_code) == (
            auth_pb2.VERDICT_REJECT,
            "algorithm_not_offered",
            407,
        )
        # Asking for MD5 explicitly in that realm is refused as a caller fault.
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            await client.issue_challenge(method="INVITE", realm="secure.test", algorithms=["MD5"])
        ok = answer_for(secure, username="alice", password="wonderland", method="INVITE", uri=URI)
        accepted = await client.verify_response(
            authorization=ok, method="INVITE", request_uri=URI, realm="secure.test", proxy=True
        )
        assert accepted.verdict == auth_pb2.VERDICT_ACCEPT


def _independent_userhash_answer(challenge: str, username: str, password: str, method: str, uri: str) -> str:
    """An RFC 7616 section 3.4.4 userhash answer computed with hashlib alone (not sipauth's code)."""
    fields = dict(part.strip().split("=", 1) for part in challenge.removeprefix("Digest ").split(", "))
    realm = fields["realm"].strip('"')
    nonce = fields["nonce"].strip('"')
    assert fields["userhash"] == "true"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    cnonce, nc = "f2/wE4q74E6zIJEtWaHKaf5w", "00000001"
    response = h(f"{h(f'{username}:{realm}:{password}')}:{nonce}:{nc}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    return (
        f'Digest username="{h(f"{username}:{realm}")}", realm="{realm}", uri="{uri}", algorithm=SHA-256, '
        f'nonce="{nonce}", nc={nc}, cnonce="{cnonce}", qop=auth, response="{response}", userhash=true'
    )


async def test_userhash_login(server_factory: Callable[..., Any]) -> None:
    """With userhash on, an answer carrying H(username:realm) instead of the name is ACCEPTed as that user."""
    server: RunningServer = await server_factory(policy={"algorithms": ["SHA-256"], "userhash": True})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        value = challenge.header_values[0]
        assert "userhash=true" in value
        authorization = _independent_userhash_answer(value, "alice", "wonderland", "REGISTER", "sip:example.test")
        verdict = await client.verify_response(
            authorization=authorization, method="REGISTER", request_uri="sip:example.test"
        )
        assert verdict.verdict == auth_pb2.VERDICT_ACCEPT
        assert verdict.username == "alice"
        assert verdict.identity.display_name == "Alice Liddell"
        wrong = _independent_userhash_answer(value, "alice", "nope", "REGISTER", "sip:example.test")
        refused = await client.verify_response(authorization=wrong, method="REGISTER", request_uri="sip:example.test")
        assert (refused.verdict, refused.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")
        unknown = _independent_userhash_answer(value, "mallory", "x", "REGISTER", "sip:example.test")
        refused = await client.verify_response(authorization=unknown, method="REGISTER", request_uri="sip:example.test")
        assert (refused.verdict, refused.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")


async def test_userhash_refused_where_not_offered(client: AsyncSipauthClient) -> None:
    """A userhash answer in a realm that does not offer userhash is REJECTed."""
    challenge = await client.issue_challenge(method="REGISTER", algorithms=["SHA-256"])
    value = challenge.header_values[0] + ", userhash=true"
    authorization = _independent_userhash_answer(value, "alice", "wonderland", "REGISTER", "sip:example.test")
    verdict = await client.verify_response(
        authorization=authorization, method="REGISTER", request_uri="sip:example.test"
    )
    assert (verdict.verdict, verdict.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")
