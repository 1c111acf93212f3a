"""Every verdict path of the use case, without gRPC (users file, in-memory replay guard, a fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipauth.authenticator import (
    Authenticator,
    Challenge,
    ChallengeKind,
    ChallengeRequest,
    Decision,
    Verdict,
    VerifyRequest,
)
from sipauth.credentials import UsersFile
from sipauth.digest import Algorithm
from sipauth.errors import InvalidRequest
from sipauth.nonce import NonceKeyring
from sipauth.policy import RealmPolicy
from sipauth.replay import MemoryReplayGuard, ReplayMode
from sipauth_client import answer_challenge, parse_challenge, verify_rspauth

REALM = "example.test"
URI = "sip:example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(
        "users:\n"
        "  alice: {password: wonderland, display_name: Alice, sip_uri: 'sip:alice@example.test', groups: [staff]}\n"
        "  carol: {password: secret, disabled: true}\n"
        "  dave:\n"
        "    ha1: {MD5: f7261aab12db8b9806610e7cdcccfa3c}\n"  # H(dave:example.test:pass) below
    )
    return path


def make(users: Path, clock: Clock, **policy: object) -> Authenticator:
    return Authenticator(
        default_realm=REALM,
        policies={REALM: RealmPolicy(REALM, **policy)},  # type: ignore[arg-type]
        keyring=NonceKeyring([b"k" * 32]),
        replay=MemoryReplayGuard(clock=clock),
        credentials=UsersFile(users, REALM),
        clock=clock,
    )


def answer(challenge: Challenge, user: str, password: str, *, index: int = 0, nc: int = 1, **kw: object) -> str:
    return answer_challenge(
        parse_challenge(challenge.header_values[index]),
        username=user,
        password=password,
        method=str(kw.pop("method", "REGISTER")),
        uri=str(kw.pop("uri", URI)),
        nc=nc,
        **kw,  # type: ignore[arg-type]
    )


def answer_without_qop(challenge: Challenge) -> str:
    """Alice's RFC 2069 answer (no qop, nc or cnonce) to the first challenge value."""
    params = parse_challenge(challenge.header_values[0])
    return answer_challenge(
        type(params)(realm=REALM, nonce=params.nonce, algorithm=params.algorithm),
        username="alice",
        password="wonderland",
        method="REGISTER",
        uri=URI,
    )


async def verify(auth: Authenticator, authorization: str, **kw: object) -> Decision:
    request = VerifyRequest(
        method=str(kw.pop("method", "REGISTER")), request_uri=str(kw.pop("uri", URI)), authorization=authorization, **kw
    )  # type: ignore[arg-type]
    return await auth.verify(request)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(users: Path, clock: Clock) -> Authenticator:
    return make(users, clock)


def test_challenge_offers_configured_algorithms_in_order(auth: Authenticator) -> None:
    """IssueChallenge offers one value per algorithm, SHA-256 before MD5, each with its own nonce."""
    challenge = auth.issue_challenge(ChallengeRequest(method="INVITE", kind=ChallengeKind.PROXY))
    assert challenge.status_code == 407
    assert challenge.header_name == "Proxy-Authenticate"
    parsed = [parse_challenge(v) for v in challenge.header_values]
    assert [p.algorithm for p in parsed] == ["SHA-256", "MD5"]
    assert parsed[0].nonce != parsed[1].nonce
    assert all(p.realm == REALM and p.qop == ("auth",) for p in parsed)


async def test_accept_with_identity_and_mutual_auth(auth: Authenticator) -> None:
    """A correct answer is ACCEPTed with identity, and rspauth in Authentication-Info verifies for the UA."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    decision = await verify(auth, answer(challenge, "alice", "wonderland"))
    assert decision.verdict is Verdict.ACCEPT
    assert decision.username == "alice"
    assert decision.identity.display_name == "Alice"
    info = decision.authentication_info
    assert "nextnonce=" in info
    assert verify_rspauth(
        info, parse_challenge(challenge.header_values[0]), username="alice", password="wonderland", uri=URI
    )


async def test_nextnonce_is_usable(auth: Authenticator) -> None:
    """The nextnonce from Authentication-Info answers the next request without a new challenge."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    first = await verify(auth, answer(challenge, "alice", "wonderland"))
    nextnonce = first.authentication_info.split('nextnonce="')[1].split('"')[0]
    params = parse_challenge(challenge.header_values[0])
    follow = answer_challenge(
        type(params)(realm=REALM, nonce=nextnonce, algorithm="SHA-256", qop=("auth",)),
        username="alice",
        password="wonderland",
        method="REGISTER",
        uri=URI,
    )
    assert (await verify(auth, follow)).verdict is Verdict.ACCEPT


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nobody", "wonderland")])
async def test_wrong_password_and_unknown_user_look_alike(auth: Authenticator, user: str, password: str) -> None:
    """Wrong password and unknown user both give REJECT bad_credentials with a fresh 401 challenge."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    decision = await verify(auth, answer(challenge, user, password))
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "bad_credentials"
    assert decision.status_code == 401
    assert decision.username == ""
    assert len(decision.challenge.header_values) == 2


async def test_stored_ha1_user(auth: Authenticator) -> None:
    """A user with only a stored MD5 HA1 logs in with MD5 and cannot with SHA-256."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    ok = await verify(auth, answer(challenge, "dave", "pass", index=1))
    assert ok.verdict is Verdict.ACCEPT
    sha = await verify(auth, answer(challenge, "dave", "pass", index=0))
    assert (sha.verdict, sha.reason) == (Verdict.REJECT, "bad_credentials")


async def test_disabled_account_is_forbidden(auth: Authenticator) -> None:
    """A correct answer for a disabled account is FORBIDDEN (403) with the username."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    decision = await verify(auth, answer(challenge, "carol", "secret"))
    assert (decision.verdict, decision.reason, decision.status_code) == (
        Verdict.FORBIDDEN,
        "account_disabled",
        403,
    )
    assert decision.username == "carol"
    assert decision.challenge is None


async def test_expired_nonce_is_stale_only_when_correct(auth: Authenticator, clock: Clock) -> None:
    """After the nonce lifetime a correct answer is STALE (stale=true); a wrong one is still REJECT."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    clock.now += 301
    decision = await verify(auth, answer(challenge, "alice", "wonderland"))
    assert (decision.verdict, decision.reason) == (Verdict.STALE, "nonce_expired")
    assert all("stale=true" in v for v in decision.challenge.header_values)
    wrong = await verify(auth, answer(challenge, "alice", "nope"))
    assert wrong.verdict is Verdict.REJECT


async def test_nc_must_increase(auth: Authenticator) -> None:
    """nc 1 then 2 ACCEPT; 2 again, or 1 after 2, is STALE nonce_replayed."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    results = []
    for nc in (1, 2, 2, 1, 3):
        decision = await verify(auth, answer(challenge, "alice", "wonderland", nc=nc, cnonce=f"c{nc}"))
        results.append((decision.verdict, decision.reason))
    assert results == [
        (Verdict.ACCEPT, ""),
        (Verdict.ACCEPT, ""),
        (Verdict.STALE, "nonce_replayed"),
        (Verdict.STALE, "nonce_replayed"),
        (Verdict.ACCEPT, ""),
    ]


async def test_one_time_mode(users: Path, clock: Clock) -> None:
    """In one-time mode a nonce is accepted once, whatever the nc."""
    auth = make(users, clock, replay_mode=ReplayMode.ONE_TIME)
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    first = await verify(auth, answer(challenge, "alice", "wonderland", nc=1))
    second = await verify(auth, answer(challenge, "alice", "wonderland", nc=2))
    assert first.verdict is Verdict.ACCEPT
    assert (second.verdict, second.reason) == (Verdict.STALE, "nonce_replayed")


async def test_tampered_nonce_is_forged(auth: Authenticator) -> None:
    """Changing one character of the nonce gives REJECT nonce_forged."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    params = parse_challenge(challenge.header_values[0])
    nonce = params.nonce[:10] + ("A" if params.nonce[10] != "A" else "B") + params.nonce[11:]
    tampered = type(params)(realm=REALM, nonce=nonce, algorithm="SHA-256", qop=("auth",))
    authorization = answer_challenge(tampered, username="alice", password="wonderland", method="REGISTER", uri=URI)
    decision = await verify(auth, authorization)
    assert (decision.verdict, decision.reason) == (Verdict.REJECT, "nonce_forged")


async def test_downgrade_to_another_algorithm_is_refused(auth: Authenticator) -> None:
    """A nonce offered with SHA-256 answered with MD5 is refused (RFC 8760 section 3)."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    params = parse_challenge(challenge.header_values[0])
    downgraded = type(params)(realm=REALM, nonce=params.nonce, algorithm="MD5", qop=("auth",))
    authorization = answer_challenge(downgraded, username="alice", password="wonderland", method="REGISTER", uri=URI)
    decision = await verify(auth, authorization)
    assert (decision.verdict, decision.reason) == (Verdict.REJECT, "algorithm_not_offered")


async def test_realm_and_uri_mismatch(auth: Authenticator) -> None:
    """An answer for another realm or another Request-URI is REJECTed with that reason."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    good = answer(challenge, "alice", "wonderland")
    other_realm = good.replace('realm="example.test"', 'realm="evil.test"')
    assert (await verify(auth, other_realm)).reason == "realm_mismatch"
    assert (await verify(auth, good, uri="sip:other.test")).reason == "uri_mismatch"


async def test_qop_rules(users: Path, clock: Clock) -> None:
    """No qop is refused unless allowed (RFC 8760); auth-int is refused when only auth is offered."""
    auth = make(users, clock)
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    no_qop = answer_without_qop(challenge)
    assert (await verify(auth, no_qop)).reason == "qop_missing"
    auth_int = answer(challenge, "alice", "wonderland", qop="auth-int")
    assert (await verify(auth, auth_int)).reason == "qop_not_offered"

    legacy = make(users, clock, allow_qop_less=True, qop=("auth", "auth-int"))
    challenge = legacy.issue_challenge(ChallengeRequest(method="REGISTER"))
    no_qop = answer_without_qop(challenge)
    assert (await verify(legacy, no_qop)).verdict is Verdict.ACCEPT
    assert (await verify(legacy, no_qop)).reason == "nonce_replayed"
    body = b"v=0\r\n"
    auth_int = answer(challenge, "alice", "wonderland", index=1, qop="auth-int", body=body)
    assert (await verify(legacy, auth_int, body=body)).verdict is Verdict.ACCEPT
    tampered_body = answer(challenge, "alice", "wonderland", index=1, qop="auth-int", body=body, nc=2)
    assert (await verify(legacy, tampered_body, body=b"v=1\r\n")).reason == "bad_credentials"


async def test_bindings(users: Path, clock: Clock) -> None:
    """With source IP and Call-ID bindings, the answer must come with the same IP and Call-ID."""
    auth = make(users, clock, bind_source_ip=True, bind_call_id=True)
    challenge = auth.issue_challenge(ChallengeRequest(method="INVITE", source_ip="192.0.2.1", call_id="c1"))
    authorization = answer(challenge, "alice", "wonderland", method="INVITE")
    moved = await verify(auth, authorization, method="INVITE", source_ip="192.0.2.9", call_id="c1")
    assert moved.reason == "nonce_forged"
    ok = await verify(auth, authorization, method="INVITE", source_ip="192.0.2.1", call_id="c1")
    assert ok.verdict is Verdict.ACCEPT
    with pytest.raises(InvalidRequest, match="source_ip"):
        auth.issue_challenge(ChallengeRequest(method="INVITE", call_id="c1"))


async def test_missing_and_malformed_credentials(auth: Authenticator) -> None:
    """No header -> REJECT credentials_missing (401 + challenge); garbage -> INVALID malformed (400 + challenge)."""
    missing = await verify(auth, "")
    assert (missing.verdict, missing.reason, missing.status_code) == (
        Verdict.REJECT,
        "credentials_missing",
        401,
    )
    garbage = await verify(auth, 'Digest username="x')
    assert (garbage.verdict, garbage.reason, garbage.status_code) == (
        Verdict.INVALID,
        "malformed",
        400,
    )
    assert garbage.challenge is not None


def test_request_faults_are_invalid_request(auth: Authenticator) -> None:
    """Missing method, ACK/CANCEL challenges, unknown realms and disallowed algorithms are caller faults."""
    for request in (
        ChallengeRequest(method=""),
        ChallengeRequest(method="ACK"),
        ChallengeRequest(method="cancel"),
        ChallengeRequest(method="IN VITE"),
        ChallengeRequest(method="INVITE", realm="unknown.test"),
        ChallengeRequest(method="INVITE", algorithms=(Algorithm.SHA_512_256,)),
        ChallengeRequest(method="INVITE", algorithms=(Algorithm.MD5, Algorithm.MD5)),
        ChallengeRequest(method="INVITE", call_id="x" * 5000),
    ):
        with pytest.raises(InvalidRequest):
            auth.issue_challenge(request)


async def test_verify_faults_are_invalid_request(auth: Authenticator) -> None:
    """VerifyResponse without a method or Request-URI, or with an oversized body, is a caller fault."""
    with pytest.raises(InvalidRequest):
        await auth.verify(VerifyRequest(method="", request_uri=URI))
    with pytest.raises(InvalidRequest):
        await auth.verify(VerifyRequest(method="INVITE", request_uri=""))
    with pytest.raises(InvalidRequest):
        await auth.verify(VerifyRequest(method="INVITE", request_uri=URI, body=b"x" * (2 << 20)))


async def test_requested_algorithm_subset(auth: Authenticator) -> None:
    """Requested algorithms are offered in the requested order, restricted to those the realm allows."""
    challenge = auth.issue_challenge(
        ChallengeRequest(method="INVITE", algorithms=(Algorithm.MD5, Algorithm.SHA_512_256, Algorithm.SHA_256))
    )
    assert [parse_challenge(v).algorithm for v in challenge.header_values] == ["MD5", "SHA-256"]


async def test_answer_without_qop_is_single_use_whatever_nc_is_attached(users: Path, clock: Clock) -> None:
    """An accepted qop-less answer re-sent with a higher nc attached is a replay: its digest covers no nc."""
    auth = make(users, clock, allow_qop_less=True)
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER"))
    no_qop = answer_without_qop(challenge)
    first = await verify(auth, no_qop + ", nc=00000001")
    assert first.verdict is Verdict.ACCEPT
    for nc in ("00000002", "00000003"):
        again = await verify(auth, no_qop + f", nc={nc}")
        assert (again.verdict, again.reason) == (Verdict.STALE, "nonce_replayed")


async def test_batch_of_poolable_challenges(auth: Authenticator) -> None:
    """count=N mints N independent challenges, all poolable without bindings, each answerable once."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER", count=4))
    assert challenge.poolable
    assert len(challenge.additional) == 3
    nonces = {parse_challenge(v).nonce for values in (challenge.header_values, *challenge.additional) for v in values}
    assert len(nonces) == 8
    for values in challenge.additional:
        pooled = Challenge(401, "WWW-Authenticate", values, 300)
        assert (await verify(auth, answer(pooled, "alice", "wonderland"))).verdict is Verdict.ACCEPT


@pytest.mark.parametrize("binding", ["bind_source_ip", "bind_call_id"])
def test_bound_challenges_are_not_poolable(users: Path, clock: Clock, binding: str) -> None:
    """With a per-request binding the answer is one challenge for this request, marked not poolable."""
    auth = make(users, clock, **{binding: True})
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER", source_ip="192.0.2.1", call_id="c", count=8))
    assert not challenge.poolable
    assert challenge.additional == ()


@pytest.mark.parametrize("count", [0, 1])
def test_count_zero_or_one_is_one_challenge(auth: Authenticator, count: int) -> None:
    """count 0 (unset) and 1 both give the single challenge of before, now marked poolable."""
    challenge = auth.issue_challenge(ChallengeRequest(method="REGISTER", count=count))
    assert challenge.additional == ()
    assert challenge.poolable


def test_count_is_bounded(auth: Authenticator) -> None:
    """More than 64 challenges in one call is a request the proxy should not send."""
    with pytest.raises(InvalidRequest, match="count"):
        auth.issue_challenge(ChallengeRequest(method="REGISTER", count=65))
