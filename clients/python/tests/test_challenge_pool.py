"""The challenge pool: requests without credentials answered from batches fetched with IssueChallenge count."""

from __future__ import annotations

from collections.abc import Callable

from sipauth_client import ProxyRequest, SipauthClient, answer_challenge, parse_challenge
from sipauth_client.pool import ChallengePool
from sipauth_client.v1 import auth_pb2
from tests.conftest import USERS
from tests.support.sipauth_process import SipauthProcess

URI = "sip:example.test"


def test_batches_serve_requests_without_credentials_and_each_answers_once(
    sipauth_process: Callable[..., SipauthProcess],
) -> None:
    """With challenge_batch=4, eight 401s cost two IssueChallenge calls, every nonce is distinct and accepted."""
    proc = sipauth_process({})
    calls: list[int] = []
    with SipauthClient(proc.target, timeout=5, retries=0, challenge_batch=4) as client:
        fetch = client._fetch_batch

        def counted(request: ProxyRequest) -> auth_pb2.IssueChallengeResponse:
            calls.append(1)
            return fetch(request)

        client._fetch_batch = counted  # type: ignore[method-assign]
        nonces = set()
        for _ in range(8):
            decision = client.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
            assert decision.status_code == 401
            assert decision.reason == "credentials_missing"
            challenge = parse_challenge(decision.headers[0][1])
            nonces.add(challenge.nonce)
            answer = answer_challenge(challenge, username="alice", password=USERS["alice"], method="REGISTER", uri=URI)
            accepted = client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization=answer))
            assert accepted.forward
    assert len(nonces) == 8
    assert len(calls) == 2


def test_pooled_challenge_answers_from_the_pool_alone(sipauth_process: Callable[..., SipauthProcess]) -> None:
    """pooled_challenge gives a pooled 401/407 without a call, None when the pool holds none; each nonce once."""
    proc = sipauth_process({})
    with SipauthClient(proc.target, timeout=5, retries=0, challenge_batch=3) as client:
        assert client.pooled_challenge() is None  # nothing fetched yet: authorize does that
        first = client.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
        pooled = [client.pooled_challenge(), client.pooled_challenge()]
        assert client.pooled_challenge() is None  # the batch of 3 is used up
        assert client.pooled_challenge(proxy=True) is None  # pooled per (realm, 401/407)
        nonces = {parse_challenge(first.headers[0][1]).nonce}
        for decision in pooled:
            assert decision is not None
            assert (decision.status_code, decision.reason, decision.forward) == (401, "credentials_missing", False)
            challenge = parse_challenge(decision.headers[0][1])
            nonces.add(challenge.nonce)
            answer = answer_challenge(challenge, username="alice", password=USERS["alice"], method="REGISTER", uri=URI)
            assert client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization=answer)).forward
        assert len(nonces) == 3
    with SipauthClient(proc.target, timeout=5, retries=0, challenge_batch=0) as unpooled:
        unpooled.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
        assert unpooled.pooled_challenge() is None


def test_bound_realm_is_not_pooled(sipauth_process: Callable[..., SipauthProcess]) -> None:
    """When nonces are bound to the source IP the server says so, and the client stops pooling for that realm."""
    proc = sipauth_process({"policy": {"bind_source_ip": True}})
    with SipauthClient(proc.target, timeout=5, retries=0, challenge_batch=8) as client:
        request = ProxyRequest(method="REGISTER", request_uri=URI, source_ip="192.0.2.7")
        first = client.authorize(request)
        assert first.status_code == 401
        second = client.authorize(request)
        assert second.status_code == 401
        assert len(client._pool) == 0


def test_old_challenges_are_not_handed_out() -> None:
    """A pooled challenge older than half its nonce lifetime is dropped, and a new batch fetched."""
    now = [0.0]
    pool = ChallengePool(2, clock=lambda: now[0])
    batches = 0

    def fetch() -> auth_pb2.IssueChallengeResponse:
        nonlocal batches
        batches += 1
        response = auth_pb2.IssueChallengeResponse(
            header_name="WWW-Authenticate", header_values=[f"Digest a{batches}"], nonce_ttl_seconds=100, poolable=True
        )
        response.additional_challenges.add(header_values=[f"Digest b{batches}"])
        return response

    assert pool.take("", False, fetch) == ("WWW-Authenticate", ("Digest a1",))
    now[0] = 60.0
    assert pool.take("", False, fetch) == ("WWW-Authenticate", ("Digest a2",))
    assert pool.take("", False, fetch) == ("WWW-Authenticate", ("Digest b2",))
    assert batches == 2
