"""The gRPC API end to end through a real grpc.aio server: verdicts, interop, faults and hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipauth.app import RunningServer
from sipauth_client import AsyncSipauthClient, auth_pb2, parse_challenge
from tests.support.answers import answer_for, pick
from tests.unit.hostile import HOSTILE

URI = "sip:example.test"


def _httpx_answer(challenge_value: str, username: str, password: str, method: str) -> tuple[str, str]:
    """Let httpx's DigestAuth (an implementation nobody here wrote) answer the challenge.

    Returns (Authorization value, the uri it signed).
    """
    auth = httpx.DigestAuth(username, password)
    request = httpx.Request(method, "http://example.test/sip:bob@example.test")
    flow = auth.auth_flow(request)
    first = next(flow)
    retry = flow.send(httpx.Response(401, headers={"WWW-Authenticate": challenge_value}, request=first))
    return retry.headers["Authorization"], request.url.raw_path.decode()


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"])
async def test_httpx_digest_answers_are_accepted(server_factory: Callable[..., Any], algorithm: str) -> None:
    """For every algorithm httpx's DigestAuth supports, its answer to our challenge is ACCEPTed via gRPC."""
    server: RunningServer = await server_factory(
        policy={"algorithms": ["SHA-256", "SHA-256-sess", "MD5", "MD5-sess", "SHA-512-256", "SHA-512-256-sess"]}
    )
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="INVITE", algorithms=[algorithm])
        assert len(challenge.header_values) == 1
        authorization, uri = _httpx_answer(challenge.header_values[0], "alice", "wonderland", "INVITE")
        verdict = await client.verify_response(authorization=authorization, method="INVITE", request_uri=uri)
        assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict.reason
        wrong, uri = _httpx_answer(challenge.header_values[0], "alice", "not-it", "INVITE")
        refused = await client.verify_response(authorization=wrong, method="INVITE", request_uri=uri)
        assert (refused.verdict, refused.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "SHA-512-256-sess"])
async def test_sha512_256_round_trip(server_factory: Callable[..., Any], algorithm: str) -> None:
    """SHA-512-256 and its -sess form (which httpx lacks) are ACCEPTed through gRPC."""
    server: RunningServer = await server_factory(policy={"algorithms": [algorithm, "SHA-256"]})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        authorization = answer_for(challenge, username="bob", password="builder", algorithm=algorithm)
        verdict = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
        assert verdict.verdict == auth_pb2.VERDICT_ACCEPT


async def test_challenge_shape(client: AsyncSipauthClient) -> None:
    """A proxy challenge is a 407 with one Proxy-Authenticate value per algorithm and the nonce lifetime."""
    challenge = await client.issue_challenge(method="INVITE", proxy=True, request_uri="sip:bob@example.test")
    assert challenge.status_code == 407
    assert challenge.header_name == "Proxy-Authenticate"
    assert [parse_challenge(v).algorithm for v in challenge.header_values] == ["SHA-256", "MD5"]
    assert all(v.startswith("Digest ") for v in challenge.header_values)
    assert challenge.nonce_ttl_seconds == 300


async def test_accept_carries_identity_and_authentication_info(client: AsyncSipauthClient) -> None:
    """ACCEPT returns status 0, the username, the identity from the users file and Authentication-Info."""
    challenge = await client.issue_challenge(method="REGISTER")
    authorization = answer_for(challenge, username="bob", password="builder")
    verdict = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
    assert verdict.verdict == auth_pb2.VERDICT_ACCEPT
    assert verdict.status_code == 0
    assert verdict.username == "bob"
    assert verdict.identity.display_name == "Bob the Builder"
    assert list(verdict.identity.groups) == ["staff", "builders"]
    assert "rspauth=" in verdict.authentication_info
    assert "nextnonce=" in verdict.authentication_info
    assert not verdict.HasField("challenge")


async def test_expired_nonce_is_stale(server_factory: Callable[..., Any]) -> None:
    """A correct answer after the nonce lifetime is STALE with stale=true in the fresh challenge."""
    server: RunningServer = await server_factory(policy={"nonce_ttl_seconds": 1})
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
        challenge = await client.issue_challenge(method="REGISTER")
        authorization = answer_for(challenge, username="alice", password="wonderland")
        await asyncio.sleep(1.1)
        verdict = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
        assert (verdict.verdict, verdict.reason, verdict.status_code) == (auth_pb2.VERDICT_STALE, "nonce_expired", 401)
        assert all(parse_challenge(v).stale for v in verdict.challenge.header_values)


async def test_tampered_nonce_is_rejected(client: AsyncSipauthClient) -> None:
    """A nonce with one character changed is REJECTed as nonce_forged."""
    challenge = await client.issue_challenge(method="REGISTER")
    value = pick(challenge, "SHA-256")
    nonce = parse_challenge(value).nonce
    flipped = nonce[:20] + ("x" if nonce[20] != "x" else "y") + nonce[21:]
    authorization = answer_for(value.replace(nonce, flipped), username="alice", password="wonderland")
    verdict = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
    assert (verdict.verdict, verdict.reason) == (auth_pb2.VERDICT_REJECT, "nonce_forged")
    assert len(verdict.challenge.header_values) == 2


async def test_missing_method_is_invalid_argument(client: AsyncSipauthClient) -> None:
    """A request without a method is a fault: INVALID_ARGUMENT, not a verdict."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.issue_challenge(method="")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.verify_response(authorization="", method="", request_uri=URI)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _verdict_or_invalid_argument(client: AsyncSipauthClient, authorization: str, body: bytes = b"") -> int | None:
    """The verdict, or None for INVALID_ARGUMENT; any other status fails the test."""
    try:
        response = await client.verify_response(
            authorization=authorization, method="REGISTER", request_uri=URI, body=body
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        return None
    assert response.verdict in (auth_pb2.VERDICT_REJECT, auth_pb2.VERDICT_INVALID, auth_pb2.VERDICT_STALE)
    assert response.verdict != auth_pb2.VERDICT_ACCEPT
    return int(response.verdict)


async def test_hostile_headers_through_grpc(client: AsyncSipauthClient) -> None:
    """Every hostile header gets a verdict or INVALID_ARGUMENT over gRPC, and the server keeps serving."""
    seen = set()
    for _label, header in HOSTILE:
        # Lone surrogates cannot be sent in a proto string; send the UTF-8 replacement instead.
        sendable = header.encode("utf-8", "replace").decode("utf-8")
        seen.add(await _verdict_or_invalid_argument(client, sendable))
    assert auth_pb2.VERDICT_INVALID in seen
    assert auth_pb2.VERDICT_REJECT in seen
    challenge = await client.issue_challenge(method="REGISTER")
    authorization = answer_for(challenge, username="alice", password="wonderland")
    ok = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
    assert ok.verdict == auth_pb2.VERDICT_ACCEPT


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.text(max_size=300), body=st.binary(max_size=64))
async def test_property_any_header_gets_a_verdict(client: AsyncSipauthClient, header: str, body: bytes) -> None:
    """Arbitrary header text over gRPC yields a verdict or INVALID_ARGUMENT, never another status or an ACCEPT."""
    await _verdict_or_invalid_argument(client, header.encode("utf-8", "replace").decode("utf-8"), body)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytest.mark.parametrize(
    "raw",
    [
        _field(1, b'Digest username="\xff\xfe"') + _field(2, b"REGISTER") + _field(3, b"sip:example.test"),
        _field(2, b"REG\xc3\x28") + _field(3, b"sip:x"),
        b"\x0a\xff\xff\xff\xff\x0f",  # length far beyond the message
        b"\xff\xff\xff",  # invalid tag
        _varint(1 << 3 | 0) + _varint(7) + _field(2, b"REGISTER") + _field(3, b"sip:x"),  # wrong wire type
    ],
)
async def test_undecodable_requests_are_invalid_argument(server: RunningServer, raw: bytes) -> None:
    """Bytes that are not a valid request (non-UTF-8, bad lengths, wrong types): INVALID_ARGUMENT or a verdict."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary("/sipauth.v1.AuthService/VerifyResponse")
        try:
            data = await call(raw, timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            response = auth_pb2.VerifyResponseResponse.FromString(data)
            assert response.verdict != auth_pb2.VERDICT_ACCEPT


async def test_health_and_reflection(server: RunningServer) -> None:
    """grpc.health.v1 reports SERVING and reflection lists AuthService."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "sipauth.v1.AuthService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names = {s.name for s in answer.list_services_response.service}
            assert "sipauth.v1.AuthService" in names
            assert "grpc.health.v1.Health" in names
            break


async def test_challenge_batch_over_grpc(client: AsyncSipauthClient) -> None:
    """IssueChallenge with count=5 returns the first challenge plus four additional ones, marked poolable."""
    response = await client.issue_challenge(method="REGISTER", count=5)
    assert response.poolable
    assert len(response.additional_challenges) == 4
    assert all(len(extra.header_values) == 2 for extra in response.additional_challenges)
