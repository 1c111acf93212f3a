"""Build WWW-Authenticate / Proxy-Authenticate and Authentication-Info values.

RFC 7616 section 3.3 (challenge) and section 3.5 (Authentication-Info), in
SIP's syntax (RFC 3261 sections 20.6, 20.27, 20.44, 25.1)::

    challenge      =  ("Digest" LWS digest-cln *(COMMA digest-cln))
    digest-cln     =  realm / domain / nonce / opaque / stale / algorithm
                      / qop-options / auth-param
    qop-options    =  "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
    ainfo          =  nextnonce / message-qop / response-auth / cnonce / nonce-count

RFC 8760 section 2.4: a server offering several algorithms sends one
challenge per algorithm, most preferred first.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from .algorithms import Algorithm

__all__ = ["build_authentication_info", "build_challenge", "challenge_template", "quote"]

# Control characters other than HTAB cannot appear in a quoted-string (RFC 3261 section 25.1: qdtext).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def quote(value: str) -> str:
    r"""Render a quoted-string, escaping ``\\`` and ``"`` (RFC 3261 section 25.1)."""
    if _CONTROL.search(value):
        raise ValueError("a quoted-string cannot hold control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_challenge(
    *,
    realm: str,
    nonce: str,
    algorithm: Algorithm,
    qop: Sequence[str],
    stale: bool = False,
    opaque: str | None = None,
    userhash: bool = False,
) -> str:
    """One challenge value, e.g. ``Digest realm="x", qop="auth", algorithm=SHA-256, nonce="..."``."""
    before, after = challenge_template(
        realm=realm, algorithm=algorithm, qop=qop, stale=stale, opaque=opaque, userhash=userhash
    )
    return before + quote(nonce)[1:-1] + after


@functools.lru_cache(maxsize=256)
def challenge_template(
    *,
    realm: str,
    algorithm: Algorithm,
    qop: Sequence[str],
    stale: bool = False,
    opaque: str | None = None,
    userhash: bool = False,
) -> tuple[str, str]:
    """A challenge value split around its nonce: ``before + nonce + after`` (the nonce quoted-string safe).

    Everything but the nonce is the same for a realm, so it is rendered once (``qop`` must be hashable).
    """
    parts = [f"realm={quote(realm)}"]
    if qop:
        parts.append(f"qop={quote(','.join(qop))}")
    parts.append(f"algorithm={algorithm.token}")
    parts.append('nonce="\0"')
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    if stale:
        parts.append("stale=true")
    if userhash:
        parts.append("userhash=true")
    before, after = ("Digest " + ", ".join(parts)).split("\0")
    return before, after


def build_authentication_info(
    *,
    nextnonce: str | None,
    qop: str | None,
    rspauth: str,
    cnonce: str | None,
    nc_value: str | None,
) -> str:
    """The Authentication-Info value sent with the final response to an accepted request."""
    parts = []
    if nextnonce is not None:
        parts.append(f"nextnonce={quote(nextnonce)}")
    if qop is not None:
        parts.append(f"qop={qop}")
    parts.append(f"rspauth={quote(rspauth)}")
    if cnonce is not None:
        parts.append(f"cnonce={quote(cnonce)}")
    if nc_value is not None:
        parts.append(f"nc={nc_value}")
    return ", ".join(parts)
