"""The digest computations of RFC 7616 section 3.4.1-3.4.3 and RFC 2617 section 3.2.2.

::

    response = KD(H(A1), unq(nonce) ":" nc ":" unq(cnonce) ":" unq(qop) ":" H(A2))
    response = KD(H(A1), unq(nonce) ":" H(A2))         ; no qop (RFC 2069)
    A1       = unq(username) ":" unq(realm) ":" passwd
    A1       = H(unq(username) ":" unq(realm) ":" passwd) ":" unq(nonce) ":" unq(cnonce)  ; -sess
    A2       = Method ":" request-uri                    ; qop=auth or none
    A2       = Method ":" request-uri ":" H(entity-body) ; qop=auth-int
    KD(secret, data) = H(concat(secret, ":", data))

``rspauth`` (RFC 7616 section 3.5) is the same computation with an empty Method.
Strings are encoded as UTF-8 (RFC 7616 section 4).
"""

from __future__ import annotations

import hmac

from .algorithms import Algorithm

__all__ = ["compute_ha1", "digests_equal", "request_digest", "response_auth", "userhash"]


def _h(algorithm: Algorithm, *parts: str) -> str:
    return algorithm.h(":".join(parts).encode("utf-8"))


def compute_ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" password) with the algorithm's hash (never the -sess form)."""
    return _h(algorithm.base, username, realm, password)


def userhash(algorithm: Algorithm, username: str, realm: str) -> str:
    """H(username ":" realm), the hashed username of RFC 7616 section 3.4.4."""
    return _h(algorithm.base, username, realm)


def _effective_ha1(algorithm: Algorithm, ha1: str, nonce: str, cnonce: str | None) -> str:
    if not algorithm.is_session:
        return ha1
    # RFC 7616 section 3.4.2: for -sess, A1 also binds both nonces.
    return _h(algorithm, ha1, nonce, cnonce or "")


def _ha2(algorithm: Algorithm, method: str, uri: str, qop: str | None, body: bytes) -> str:
    if qop == "auth-int":
        return _h(algorithm, method, uri, algorithm.h(body))
    return _h(algorithm, method, uri)


def request_digest(
    algorithm: Algorithm,
    ha1: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc_value: str | None,
    cnonce: str | None,
    body: bytes = b"",
) -> str:
    """The ``response`` value a UA holding ``ha1`` must send."""
    session_ha1 = _effective_ha1(algorithm, ha1, nonce, cnonce)
    ha2 = _ha2(algorithm, method, uri, qop, body)
    if qop is None:
        return _h(algorithm, session_ha1, nonce, ha2)
    return _h(algorithm, session_ha1, nonce, nc_value or "", cnonce or "", qop, ha2)


def response_auth(
    algorithm: Algorithm,
    ha1: str,
    *,
    nonce: str,
    uri: str,
    qop: str | None,
    nc_value: str | None,
    cnonce: str | None,
    body: bytes = b"",
) -> str:
    """``rspauth`` for Authentication-Info: the request digest with an empty method."""
    return request_digest(
        algorithm, ha1, nonce=nonce, method="", uri=uri, qop=qop, nc_value=nc_value, cnonce=cnonce, body=body
    )


def digests_equal(expected: str, received: str) -> bool:
    """Compare two hex digests in constant time (length differences leak only the length)."""
    return hmac.compare_digest(expected.encode("ascii"), received.encode("ascii", "replace"))
