"""The digest computations against published vectors and across every algorithm and qop."""

from __future__ import annotations

import hashlib

import pytest

from sipauth.digest import (
    Algorithm,
    build_authentication_info,
    build_challenge,
    compute_ha1,
    digests_equal,
    parse_credentials,
    request_digest,
    response_auth,
    userhash,
)

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA_256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1(algorithm: Algorithm, expected: str) -> None:
    """RFC 7616 section 3.9.1: Mufasa's response for MD5 and SHA-256 is reproduced exactly."""
    ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = request_digest(
        algorithm,
        ha1,
        nonce=RFC7616_NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc_value="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert response == expected


def test_rfc7616_section_3_9_1_header_parses_and_verifies() -> None:
    """The Authorization header printed in RFC 7616 section 3.9.1 parses and its response verifies."""
    header = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = parse_credentials(header)
    ha1 = compute_ha1(creds.algorithm, creds.username, creds.realm, "Circle of Life")
    expected = request_digest(
        creds.algorithm,
        ha1,
        nonce=creds.nonce,
        method="GET",
        uri=creds.uri,
        qop=creds.qop,
        nc_value=creds.nc_value,
        cnonce=creds.cnonce,
    )
    assert digests_equal(expected, creds.response)
    assert creds.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc2617_section_3_5() -> None:
    """RFC 2617 section 3.5: the classic MD5 example yields 6629fae4..."""
    ha1 = compute_ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")
    response = request_digest(
        Algorithm.MD5,
        ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc_value="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_sha512_256_is_the_fips_function_not_a_truncation() -> None:
    """SHA-512-256 is FIPS 180-4 SHA-512/256 (known answer for "abc"), not truncated SHA-512."""
    assert Algorithm.SHA_512_256.h(b"abc") == "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    assert Algorithm.SHA_512_256.h(b"abc") != hashlib.sha512(b"abc").hexdigest()[:64]


def _independent_response(
    algorithm: str, user: str, realm: str, password: str, nonce: str, cnonce: str, qop: str | None, body: bytes
) -> str:
    """The RFC 7616 formulas written out again with hashlib alone."""
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm.removesuffix("-sess")]

    def h(data: str | bytes) -> str:
        return hashlib.new(name, data.encode() if isinstance(data, str) else data).hexdigest()

    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    a2 = f"INVITE:sip:bob@example.test:{h(body)}" if qop == "auth-int" else "INVITE:sip:bob@example.test"
    if qop is None:
        return h(f"{ha1}:{nonce}:{h(a2)}")
    return h(f"{ha1}:{nonce}:00000001:{cnonce}:{qop}:{h(a2)}")


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("qop", ["auth", "auth-int", None])
def test_every_algorithm_and_qop_round_trips(algorithm: Algorithm, qop: str | None) -> None:
    """For every algorithm x qop, our response equals an independent hashlib computation and verifies."""
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    ha1 = compute_ha1(algorithm, "alice", "example.test", "wonderland")
    ours = request_digest(
        algorithm,
        ha1,
        nonce="n0nce",
        method="INVITE",
        uri="sip:bob@example.test",
        qop=qop,
        nc_value="00000001" if qop else None,
        cnonce="c0nce" if qop else None,
        body=body,
    )
    theirs = _independent_response(
        algorithm.token, "alice", "example.test", "wonderland", "n0nce", "c0nce" if qop else "", qop, body
    )
    assert ours == theirs
    assert len(ours) == algorithm.digest_hex_length
    assert digests_equal(ours, theirs)
    assert not digests_equal(ours, theirs[:-1] + ("0" if theirs[-1] != "0" else "1"))


def test_session_algorithms_bind_the_cnonce() -> None:
    """With -sess the response changes with the cnonce even when everything else is equal."""
    ha1 = compute_ha1(Algorithm.SHA_256_SESS, "alice", "example.test", "wonderland")
    common = {"nonce": "n", "method": "REGISTER", "uri": "sip:example.test", "qop": "auth", "nc_value": "00000001"}
    a = request_digest(Algorithm.SHA_256_SESS, ha1, cnonce="one", **common)  # type: ignore[arg-type]
    b = request_digest(Algorithm.SHA_256_SESS, ha1, cnonce="two", **common)  # type: ignore[arg-type]
    assert a != b


def test_rspauth_uses_an_empty_method() -> None:
    """rspauth is the request digest computed with an empty method (RFC 7616 section 3.5)."""
    ha1 = compute_ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")
    kwargs = {"nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093", "uri": "/dir/index.html", "qop": "auth"}
    rspauth = response_auth(Algorithm.MD5, ha1, nc_value="00000001", cnonce="0a4f113b", **kwargs)  # type: ignore[arg-type]
    direct = request_digest(Algorithm.MD5, ha1, method="", nc_value="00000001", cnonce="0a4f113b", **kwargs)  # type: ignore[arg-type]
    assert rspauth == direct


def test_userhash_is_hash_of_username_and_realm() -> None:
    """userhash is H(username ":" realm) with the algorithm's hash (RFC 7616 section 3.4.4)."""
    expected = hashlib.new("sha512_256", "J\u00e4s\u00f8n Doe:api@example.org".encode()).hexdigest()
    assert userhash(Algorithm.SHA_512_256, "J\u00e4s\u00f8n Doe", "api@example.org") == expected


def test_challenge_value_format() -> None:
    """A challenge names realm, qop, algorithm and nonce, quoting what RFC 3261 quotes."""
    value = build_challenge(realm="example.test", nonce="abc", algorithm=Algorithm.SHA_256, qop=("auth", "auth-int"))
    assert value == 'Digest realm="example.test", qop="auth,auth-int", algorithm=SHA-256, nonce="abc"'
    stale = build_challenge(realm='we"ird', nonce="abc", algorithm=Algorithm.MD5, qop=("auth",), stale=True)
    assert stale.endswith(", stale=true")
    assert 'realm="we\\"ird"' in stale


def test_authentication_info_format() -> None:
    """Authentication-Info carries nextnonce, qop, rspauth, cnonce and nc (RFC 3261 section 20.6)."""
    value = build_authentication_info(nextnonce="nn", qop="auth", rspauth="ab", cnonce="cn", nc_value="00000001")
    assert value == 'nextnonce="nn", qop=auth, rspauth="ab", cnonce="cn", nc=00000001'
