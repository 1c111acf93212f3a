"""SIPp and a small SIP UA -> Kamailio (clients/kamailio, app_python3 + sipauth-client) -> sipauth -> Redis + slapd."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import USERS
from tests.support.kamailio import Kamailio
from tests.support.sip_ua import SipResponse, SipUA, SipUAS, httpx_digest
from tests.support.sipauth_process import SipauthProcess
from tests.support.sipp import SippServer, run_sipp

pytestmark = pytest.mark.e2e

ALICE = ("alice", USERS["alice"])
REGISTRAR_URI = "sip:example.test"


def _challenge(response: SipResponse, header: str, algorithm: str) -> str:
    for value in response.all(header):
        if f"algorithm={algorithm}," in value or value.endswith(f"algorithm={algorithm}"):
            return value
    raise AssertionError(f"no {algorithm} {header} in:\n{response.raw}")


def _param(value: str, name: str) -> str:
    match = re.search(rf'{name}="?([^",]*)"?', value)
    assert match is not None, f"no {name} in {value}"
    return match.group(1)


def _register(ua: SipUA, call_id: str, cseq: int, authorization: str | None = None) -> SipResponse:
    headers = (("Authorization", authorization),) if authorization else ()
    return ua.request("REGISTER", REGISTRAR_URI, call_id=call_id, cseq=cseq, headers=headers)


# -- SIPp --------------------------------------------------------------------------------------


def test_register_md5_digest_is_challenged_then_accepted(kamailio: Kamailio, tmp_path: Path) -> None:
    """SIPp REGISTER gets 401, answers with MD5 qop=auth, and gets 200 carrying Authentication-Info."""
    result = run_sipp(
        tmp_path / "sipp", "register.xml", kamailio.hostport, calls=5, auth=ALICE, auth_uri=REGISTRAR_URI,
        keys={"user": "alice"},
    )  # fmt: skip
    assert (result.successful, result.failed) == (5, 0), result.summary()


def test_register_with_a_wrong_password_is_never_accepted(kamailio: Kamailio, tmp_path: Path) -> None:
    """A REGISTER answered with a wrong password gets 401 again, never 200."""
    result = run_sipp(
        tmp_path / "sipp", "register_rejected.xml", kamailio.hostport, calls=3, auth=("alice", "not-the-password"),
        auth_uri=REGISTRAR_URI, keys={"user": "alice"},
    )  # fmt: skip
    assert (result.successful, result.failed) == (3, 0), result.summary()
    assert "bad_credentials" in kamailio.log


def test_invite_and_bye_are_challenged_and_forwarded(
    kamailio: Kamailio, uas_factory: Callable[[str], SippServer], tmp_path: Path
) -> None:
    """INVITE and its in-dialog BYE each get 407, then reach a SIPp UAS; the 200 carries Proxy-Authentication-Info."""
    uas = uas_factory("uas_invite.xml")
    target = f"sip:bob@127.0.0.1:{uas.port}"
    result = run_sipp(
        tmp_path / "sipp", "invite_bye.xml", kamailio.hostport, calls=1, auth=ALICE, auth_uri=target,
        keys={"user": "alice", "uas_port": str(uas.port)},
    )  # fmt: skip
    assert (result.successful, result.failed) == (1, 0), result.summary()


def test_message_and_refer_are_challenged_and_forwarded(
    kamailio: Kamailio, uas_factory: Callable[[str], SippServer], tmp_path: Path
) -> None:
    """MESSAGE and REFER each get 407, then reach a SIPp UAS that answers 200 and 202."""
    uas = uas_factory("uas_message_refer.xml")
    target = f"sip:bob@127.0.0.1:{uas.port}"
    result = run_sipp(
        tmp_path / "sipp", "message_refer.xml", kamailio.hostport, calls=1, auth=ALICE, auth_uri=target,
        keys={"user": "alice", "uas_port": str(uas.port)},
    )  # fmt: skip
    assert (result.successful, result.failed) == (1, 0), result.summary()


# -- hand-built SIP, digest by httpx -------------------------------------------------------------


def test_every_challengeable_method_is_challenged_and_ack_cancel_are_not(kamailio: Kamailio) -> None:
    """REGISTER gets 401 + WWW-Authenticate, every other method 407 + Proxy-Authenticate; CANCEL is not challenged."""
    ua = SipUA(kamailio.address)
    try:
        response = ua.request("REGISTER", REGISTRAR_URI)
        assert response.status == 401, response.raw
        assert len(response.all("WWW-Authenticate")) == 2
        for method in ("INVITE", "BYE", "MESSAGE", "REFER", "SUBSCRIBE", "NOTIFY", "OPTIONS", "INFO", "UPDATE",
                       "PUBLISH", "PRACK"):  # fmt: skip
            response = ua.request(method, "sip:bob@example.test")
            assert response.status == 407, f"{method}: {response.raw}"
            assert [_param(v, "algorithm") for v in response.all("Proxy-Authenticate")] == ["MD5", "SHA-256"]
        # A CANCEL matching no transaction: answered by tm, never challenged (RFC 3261 section 22.1).
        response = ua.request("CANCEL", "sip:bob@example.test")
        assert response.status == 481, response.raw
    finally:
        ua.close()


def test_cancel_and_ack_of_an_authenticated_invite_pass_unchallenged(kamailio: Kamailio) -> None:
    """A forwarded INVITE's CANCEL reaches the callee unchallenged, and so does the ACK of its 487."""
    ua, uas = SipUA(kamailio.address), SipUAS()
    try:
        call_id = uuid.uuid4().hex
        first = ua.request("INVITE", uas.uri, call_id=call_id)
        assert first.status == 407
        challenge = _challenge(first, "Proxy-Authenticate", "SHA-256")
        credentials = httpx_digest(challenge, method="INVITE", uri=uas.uri, username=ALICE[0], password=ALICE[1])
        branch = uuid.uuid4().hex
        invite = ua.build("INVITE", uas.uri, call_id=call_id, cseq=2, branch=branch,
                          headers=(("Proxy-Authorization", credentials),))  # fmt: skip
        ua.send(invite)
        forwarded = uas.receive(method="INVITE")
        assert not forwarded.all("Proxy-Authorization"), "the consumed credentials must be stripped"
        uas.reply(forwarded, 180, "Ringing")
        # RFC 3261 section 9.1: a UA cancels only after a provisional response.
        deadline = time.monotonic() + 5
        while (ringing := ua.receive(1.0)) is None or ringing.status != 180:
            assert time.monotonic() < deadline, "no 180 relayed"
        cancel = ua.build("CANCEL", uas.uri, call_id=call_id, cseq=2, branch=branch)
        ua.send(cancel)
        cancelled = uas.receive(method="CANCEL")
        uas.reply(cancelled, 200, "OK")
        uas.reply(forwarded, 487, "Request Terminated")
        statuses = set()
        deadline = time.monotonic() + 5
        while not {200, 487} <= statuses and time.monotonic() < deadline:
            response = ua.receive(1.0)
            if response is not None:
                statuses.add(response.status)
        assert {200, 487} <= statuses, statuses
        ack = ua.build("ACK", uas.uri, call_id=call_id, cseq=2, branch=branch)
        ua.send(ack)
        # tm absorbs the hop-by-hop ACK of a 487 and acknowledges the callee itself: no 407 comes back.
        assert uas.receive(method="ACK").method == "ACK"
        assert ua.receive(0.5) is None
    finally:
        ua.close()
        uas.close()


def test_sha256_digest_end_to_end_with_an_independent_ua(kamailio: Kamailio) -> None:
    """A UA whose SHA-256 answers come from httpx registers and sends a MESSAGE that arrives without credentials."""
    ua, uas = SipUA(kamailio.address), SipUAS()
    try:
        call_id = uuid.uuid4().hex
        first = _register(ua, call_id, 1)
        challenge = _challenge(first, "WWW-Authenticate", "SHA-256")
        credentials = httpx_digest(
            challenge, method="REGISTER", uri=REGISTRAR_URI, username=ALICE[0], password=ALICE[1]
        )
        assert "algorithm=SHA-256" in credentials
        accepted = _register(ua, call_id, 2, credentials)
        assert accepted.status == 200, accepted.raw
        # Mutual authentication: rspauth = H(HA1:nonce:nc:cnonce:qop:H(":" uri)), checked with hashlib here.
        info = accepted.get("Authentication-Info")
        assert info is not None

        def h(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        ha1 = h(f"{ALICE[0]}:example.test:{ALICE[1]}")
        nonce, nc, cnonce = (_param(credentials, name) for name in ("nonce", "nc", "cnonce"))
        assert _param(info, "rspauth") == h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{h(':' + REGISTRAR_URI)}")

        message_call = uuid.uuid4().hex
        challenged = ua.request("MESSAGE", uas.uri, call_id=message_call, body="hello")
        assert challenged.status == 407
        challenge = _challenge(challenged, "Proxy-Authenticate", "SHA-256")
        credentials = httpx_digest(challenge, method="MESSAGE", uri=uas.uri, username=ALICE[0], password=ALICE[1])
        data = ua.build("MESSAGE", uas.uri, call_id=message_call, cseq=2, branch=uuid.uuid4().hex,
                        headers=(("Proxy-Authorization", credentials),), body="hello")  # fmt: skip
        ua.send(data)
        forwarded = uas.receive(method="MESSAGE")
        assert not forwarded.all("Proxy-Authorization"), forwarded.raw
        assert forwarded.raw.endswith("hello")
        uas.reply(forwarded, 200, "OK")
        answer = ua.receive(5)
        assert answer is not None
        assert answer.status == 200
        assert answer.get("Proxy-Authentication-Info") is not None
    finally:
        ua.close()
        uas.close()


def test_replayed_authorization_is_refused_and_the_stale_challenge_is_answered(kamailio: Kamailio) -> None:
    """A captured Authorization replayed in a new request gets 401 stale=true, and answering that challenge succeeds."""
    ua = SipUA(kamailio.address)
    try:
        call_id = uuid.uuid4().hex
        challenge = _challenge(_register(ua, call_id, 1), "WWW-Authenticate", "MD5")
        captured = httpx_digest(challenge, method="REGISTER", uri=REGISTRAR_URI, username=ALICE[0], password=ALICE[1])
        assert _register(ua, call_id, 2, captured).status == 200
        replayed = _register(ua, call_id, 3, captured)
        assert replayed.status == 401, replayed.raw
        stale = _challenge(replayed, "WWW-Authenticate", "MD5")
        assert "stale=true" in stale.lower()
        # From another dialog the same header fails too (the nonce is bound to its Call-ID).
        assert _register(ua, uuid.uuid4().hex, 1, captured).status == 401
        fresh = httpx_digest(stale, method="REGISTER", uri=REGISTRAR_URI, username=ALICE[0], password=ALICE[1])
        assert _register(ua, call_id, 4, fresh).status == 200
    finally:
        ua.close()


def test_challenge_from_one_kamailio_is_accepted_by_another(
    kamailio_factory: Callable[..., Kamailio], sipauth: SipauthProcess
) -> None:
    """Two Kamailio instances share sipauth and Redis: a challenge from A answered through B is accepted, once."""
    node_a = kamailio_factory(sipauth.target, name="a")
    node_b = kamailio_factory(sipauth.target, name="b")
    ua = SipUA(node_a.address)
    try:
        call_id = uuid.uuid4().hex
        challenge = _challenge(_register(ua, call_id, 1), "WWW-Authenticate", "MD5")
        credentials = httpx_digest(
            challenge, method="REGISTER", uri=REGISTRAR_URI, username=ALICE[0], password=ALICE[1]
        )
        ua.proxy = node_b.address
        accepted = _register(ua, call_id, 2, credentials)
        assert accepted.status == 200, accepted.raw
        # The replay state is shared too: the same answer sent back to A is refused.
        ua.proxy = node_a.address
        assert _register(ua, call_id, 3, credentials).status == 401
    finally:
        ua.close()


def test_retransmissions_are_answered_by_tm_without_a_new_check(kamailio: Kamailio) -> None:
    """A retransmitted request gets the same challenge again (same nonce): the check ran once per transaction."""
    ua = SipUA(kamailio.address)
    try:
        data = ua.build("REGISTER", REGISTRAR_URI, call_id=uuid.uuid4().hex, cseq=1, branch=uuid.uuid4().hex)
        nonces = []
        for _ in range(3):
            ua.send(data)
            response = ua.receive(5)
            assert response is not None
            assert response.status == 401
            nonces.append(tuple(_param(v, "nonce") for v in response.all("WWW-Authenticate")))
        assert nonces[0] == nonces[1] == nonces[2]
    finally:
        ua.close()


def test_sipauth_down_gives_503_quickly_and_recovery_needs_no_restart(
    kamailio: Kamailio, sipauth: SipauthProcess
) -> None:
    """With sipauth stopped Kamailio answers 503 + Retry-After within a second; once it is back, calls succeed."""
    ua = SipUA(kamailio.address)
    try:
        assert _register(ua, uuid.uuid4().hex, 1).status == 401
        sipauth.stop()
        started = time.monotonic()
        response = _register(ua, uuid.uuid4().hex, 1)
        elapsed = time.monotonic() - started
        assert response.status == 503, response.raw
        assert response.get("Retry-After") == "5"
        assert elapsed < 1.0, f"503 took {elapsed:.2f}s"

        sipauth.start()
        deadline = time.monotonic() + 10
        while (response := _register(ua, uuid.uuid4().hex, 1)).status != 401:
            assert response.status == 503
            assert time.monotonic() < deadline, "Kamailio did not reconnect to sipauth within 10 s"
            time.sleep(0.2)
        call_id = uuid.uuid4().hex
        challenge = _challenge(_register(ua, call_id, 1), "WWW-Authenticate", "MD5")
        credentials = httpx_digest(
            challenge, method="REGISTER", uri=REGISTRAR_URI, username=ALICE[0], password=ALICE[1]
        )
        assert _register(ua, call_id, 2, credentials).status == 200
    finally:
        ua.close()


# -- load ----------------------------------------------------------------------------------------

LOAD_RATE = 200
LOAD_SECONDS = 30


def test_register_load_at_a_fixed_rate_has_no_failed_call(
    kamailio_factory: Callable[..., Kamailio], sipauth: SipauthProcess, tmp_path: Path
) -> None:
    """SIPp REGISTER (401 then 200) at 200 calls/s for 30 s through Kamailio completes every call."""
    # A 2 s deadline instead of 0.5 s: this 2-core box also runs SIPp, slapd, Redis and other tests,
    # and a scheduling stall must not turn into a 503 that says nothing about sipauth.
    kamailio = kamailio_factory(sipauth.target, env={"KAMAILIO_SIPAUTH_TIMEOUT": "2"})
    calls = LOAD_RATE * LOAD_SECONDS
    started = time.monotonic()
    result = run_sipp(
        tmp_path / "sipp", "register.xml", kamailio.hostport, calls=calls, rate=LOAD_RATE, auth=ALICE,
        auth_uri=REGISTRAR_URI, keys={"user": "alice"}, timeout=LOAD_SECONDS + 20,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    faults = [line for line in kamailio.log.splitlines() if "sipauth:" in line and " fault " in line]
    assert (result.successful, result.failed) == (calls, 0), result.summary() + "\n".join(faults[:20])
    assert elapsed < LOAD_SECONDS + 10, f"{calls} calls took {elapsed:.1f}s"
