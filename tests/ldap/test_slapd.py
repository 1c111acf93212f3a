"""sipauth against a real OpenLDAP slapd: each preset end to end through gRPC, injection, cache, outages, TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import ldap3
import pytest
import trustme

from sipauth.credentials.ldap import LdapSource
from sipauth.credentials.ldap_settings import LdapSettings
from sipauth_client import answer_challenge, auth_pb2, parse_challenge
from tests.ldap.conftest import URI, login
from tests.support.procs import free_port
from tests.support.slapd import READER_DN, READER_PASSWORD, SERVICE_DN, SERVICE_PASSWORD, LdapUser, SlapdServer

pytestmark = pytest.mark.ldap

BASE = 'base="dc=example,dc=test"'
ACCEPT, REJECT, FORBIDDEN = auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_REJECT, auth_pb2.VERDICT_FORBIDDEN


@pytest.mark.parametrize("preset", ["openldap", "h350"])
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256"])
async def test_openldap_and_h350_verdicts(
    slapd: SlapdServer, sipauth_ldap: Callable[..., Any], preset: str, algorithm: str
) -> None:
    """Each OpenLDAP preset and algorithm: ACCEPT (with identity), REJECT, FORBIDDEN outside the group."""
    client = await sipauth_ldap(
        slapd.sipauth_settings(preset, required_group=slapd.group_dn("sip")),
        policy={"algorithms": ["SHA-256", "SHA-512-256", "MD5"]},
    )
    accepted = await login(client, "alice", "wonderland", algorithm)
    assert accepted.verdict == ACCEPT
    assert accepted.identity.display_name == "Alice Liddell"
    assert accepted.identity.sip_uri == "sip:alice@example.test"
    assert list(accepted.identity.groups) == ["sip"]
    wrong = await login(client, "alice", "wonderland!", algorithm)
    assert (wrong.verdict, wrong.reason) == (REJECT, "bad_credentials")
    outside = await login(client, "carol", "carrots", algorithm)
    assert (outside.verdict, outside.reason) == (FORBIDDEN, "group_required")
    unknown = await login(client, "nobody", "wonderland", algorithm)
    assert (unknown.verdict, unknown.reason) == (REJECT, "bad_credentials")


async def test_active_directory_lookalike_verdicts(slapd_ad: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """active_directory preset: ACCEPT, REJECT, and FORBIDDEN for disabled, locked and out-of-group accounts."""
    client = await sipauth_ldap(slapd_ad.sipauth_settings("active_directory", required_group=slapd_ad.group_dn("sip")))
    accepted = await login(client, "alice", "wonderland")
    assert accepted.verdict == ACCEPT
    assert accepted.identity.attributes["mail"] == "alice@example.test"
    assert (await login(client, "alice", "Wonderland")).verdict == REJECT
    verdicts = {name: await login(client, name, pw) for name, pw in [("dave", "disabled-pw"), ("erin", "locked-pw")]}
    assert (verdicts["dave"].verdict, verdicts["dave"].reason) == (FORBIDDEN, "account_disabled")
    assert (verdicts["erin"].verdict, verdicts["erin"].reason) == (FORBIDDEN, "account_locked")
    outside = await login(client, "carol", "carrots")
    assert (outside.verdict, outside.reason) == (FORBIDDEN, "group_required")
    # A disabled account with a wrong password is a plain REJECT: FORBIDDEN tells nothing to a guesser.
    assert (await login(client, "dave", "guess")).verdict == REJECT


async def test_only_the_service_account_reads_sip_secrets(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """The slapd ACLs hide HA1s and SIP passwords from other accounts, so sipauth bound as one cannot ACCEPT."""
    secret_attributes = ["sipauthHA1MD5", "sipauthHA1SHA256", "SIPIdentityPassword"]
    found = {}
    for dn, password in ((SERVICE_DN, SERVICE_PASSWORD), (READER_DN, READER_PASSWORD)):
        with ldap3.Connection(ldap3.Server(slapd.url, get_info=ldap3.NONE), dn, password, auto_bind=True) as conn:
            conn.search(slapd.user_dn("alice"), "(objectClass=*)", ldap3.BASE, attributes=[*secret_attributes, "cn"])
            found[dn] = {name for name, values in conn.response[0]["raw_attributes"].items() if values}
    assert set(secret_attributes) <= found[SERVICE_DN]
    assert found[READER_DN] == {"cn"}
    client = await sipauth_ldap(slapd.sipauth_settings("openldap", bind_dn=READER_DN, bind_password=READER_PASSWORD))
    assert (await login(client, "alice", "wonderland")).verdict == REJECT


HOSTILE_NAMES = ["*", "alice)(uid=*", "alice*", "\\2a", "al\x00ice", "(" * 1024, "Ålice-ß-名前", "*)(|(uid=*"]


@pytest.mark.parametrize("preset", ["openldap", "h350"])
async def test_injection_matches_only_the_literal_name(
    slapd: SlapdServer, sipauth_ldap: Callable[..., Any], preset: str
) -> None:
    """Filter metacharacters, NUL, 1 kB of '(' and non-ASCII names match only themselves: no ACCEPT, no LDAP error."""
    slapd.add_user(LdapUser("Ålice-ß-名前", "unicode-pw"))
    source = LdapSource(LdapSettings.model_validate(slapd.sipauth_settings(preset)), "example.test")
    try:
        for name in HOSTILE_NAMES:
            record = await source.lookup(name, "example.test")
            assert record is None or record.username == name == "Ålice-ß-名前", name
    finally:
        await source.close()
    before = slapd.searches(BASE)
    client = await sipauth_ldap(slapd.sipauth_settings(preset))
    for name in HOSTILE_NAMES:
        # The password of a real user: a filter that matched alice would make this ACCEPT.
        answer = await login(client, name, "wonderland")
        if "\x00" in name:
            # The digest parser already refuses a NUL in a header value; the source refuses it too (above).
            assert (answer.verdict, answer.reason) == (auth_pb2.VERDICT_INVALID, "malformed")
        else:
            assert (answer.verdict, answer.reason) == (REJECT, "bad_credentials"), name
        assert "ldap" not in answer.reason.lower()
    assert (await login(client, "Ålice-ß-名前", "unicode-pw")).verdict == ACCEPT
    slapd.wait_for_log()
    # NUL and the 1 kB name never reach the directory; each other name is searched once, escaped
    # (the non-ASCII user's ACCEPT came from the entry cached by its REJECT).
    assert slapd.searches(BASE) - before == len(HOSTILE_NAMES) - 2
    for escaped in ("=\\2A)", "=alice\\2A)", "=\\5C2a)", "=alice\\29\\28uid=\\2A)"):
        assert slapd.searches(escaped) >= 1, escaped


async def test_thousand_calls_one_search(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """1000 VerifyResponse calls for one user (50 of them at once) cost exactly one search, counted in slapd's log."""
    client = await sipauth_ldap(slapd.sipauth_settings("openldap"))
    challenge = await client.issue_challenge(method="REGISTER", request_uri=URI, algorithms=["SHA-256"])
    params = parse_challenge(challenge.header_values[0])
    before, before_all = slapd.searches("uid=alice"), slapd.searches(BASE)

    async def call(nc: int) -> int:
        authorization = answer_challenge(
            params, username="alice", password="wonderland", method="REGISTER", uri=URI, nc=nc, cnonce="c0ffee"
        )
        answer = await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
        return int(answer.verdict)

    first = await asyncio.gather(*(call(nc) for nc in range(1, 51)))
    rest = [await call(nc) for nc in range(51, 1001)]
    # Concurrent answers with the same nonce race on nc order; what matters is that none needed LDAP twice.
    assert set(first) <= {ACCEPT, auth_pb2.VERDICT_STALE}
    assert rest == [ACCEPT] * 950
    slapd.wait_for_log()
    assert slapd.searches("uid=alice") - before == 1
    assert slapd.searches(BASE) - before_all == 1


async def test_guessing_flood_is_rate_limited(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """100 wrong passwords for one user re-read it at most once per refresh interval, not once per guess."""
    client = await sipauth_ldap(slapd.sipauth_settings("openldap"))
    answers = [await login(client, "alice", f"guess-{i}") for i in range(100)]
    assert {a.verdict for a in answers} == {REJECT}
    slapd.wait_for_log()
    assert slapd.searches("uid=alice") <= 2


async def test_password_change_is_accepted_on_the_first_attempt(
    slapd: SlapdServer, sipauth_ldap: Callable[..., Any]
) -> None:
    """After the password changes in LDAP, the first answer with the new one is ACCEPTED (and the old one REJECTED)."""
    client = await sipauth_ldap(
        slapd.sipauth_settings("openldap", cache={"refresh_min_interval_seconds": 0.2, "positive_ttl_seconds": 300})
    )
    assert (await login(client, "alice", "wonderland")).verdict == ACCEPT
    slapd.set_password("alice", "looking-glass")
    await asyncio.sleep(0.3)
    assert (await login(client, "alice", "looking-glass")).verdict == ACCEPT
    assert (await login(client, "alice", "wonderland")).verdict == REJECT


async def test_outage_serves_stale_and_recovers(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """LDAP down: cached users ACCEPT from stale entries, uncached ones get UNAVAILABLE; back up: new users work."""
    cache = {"positive_ttl_seconds": 0.2, "retry_after_seconds": 0.2, "stale_max_age_seconds": 60}
    client = await sipauth_ldap(slapd.sipauth_settings("openldap", cache=cache))
    assert (await login(client, "alice", "wonderland")).verdict == ACCEPT
    slapd.stop()
    await asyncio.sleep(0.3)  # alice's entry is now past its TTL
    assert (await login(client, "alice", "wonderland")).verdict == ACCEPT
    assert (await login(client, "alice", "not-her-password")).verdict == REJECT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await login(client, "bob", "builder")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "builder" not in (raised.value.details() or "")
    slapd.start()
    await asyncio.sleep(0.3)
    assert (await login(client, "bob", "builder")).verdict == ACCEPT


async def test_stale_entries_expire(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """Serve-stale is bounded: past stale_max_age a cached user gets UNAVAILABLE too."""
    cache = {"positive_ttl_seconds": 0.1, "retry_after_seconds": 0, "stale_max_age_seconds": 0.3}
    client = await sipauth_ldap(slapd.sipauth_settings("openldap", cache=cache))
    assert (await login(client, "alice", "wonderland")).verdict == ACCEPT
    slapd.stop()
    await asyncio.sleep(0.4)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await login(client, "alice", "wonderland")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_failover_to_the_second_url(slapd: SlapdServer, sipauth_ldap: Callable[..., Any]) -> None:
    """With the first URL dead, the second one serves."""
    dead = f"ldap://127.0.0.1:{free_port()}"
    client = await sipauth_ldap(slapd.sipauth_settings("openldap", urls=[dead, slapd.url]))
    started = time.monotonic()
    assert (await login(client, "alice", "wonderland")).verdict == ACCEPT
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
async def test_tls_is_verified(
    slapd: SlapdServer, sipauth_ldap: Callable[..., Any], transport: str, tmp_path: Any
) -> None:
    """LDAPS and StartTLS work with the server's CA and fail (UNAVAILABLE, never a verdict) with another CA."""
    url = slapd.ldaps_url if transport == "ldaps" else slapd.url
    good = await sipauth_ldap(slapd.sipauth_settings("openldap", urls=[url], start_tls=True))
    assert (await login(good, "alice", "wonderland")).verdict == ACCEPT
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    bad = await sipauth_ldap(slapd.sipauth_settings("openldap", urls=[url], start_tls=True, ca_file=str(other_ca)))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await login(bad, "alice", "wonderland")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_reconnects_after_the_server_restarts(slapd: SlapdServer) -> None:
    """Pooled connections broken by a slapd restart are replaced transparently on the next lookup."""
    source = LdapSource(LdapSettings.model_validate(slapd.sipauth_settings("openldap")), "example.test")
    try:
        assert await source.lookup("alice", "example.test") is not None
        slapd.stop()
        slapd.start()
        record = await source.lookup("alice", "example.test")
        assert record is not None
        assert record.identity.display_name == "Alice Liddell"
    finally:
        await source.close()
