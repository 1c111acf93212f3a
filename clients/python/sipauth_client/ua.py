"""The user-agent side of SIP Digest: answer a challenge (RFC 7616 section 3.4, RFC 8760).

Used by ``sipauth-client login`` to act as a phone, and handy in tests of a
proxy. It is deliberately small and independent of the server's engine.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

__all__ = ["ChallengeParams", "answer_challenge", "parse_challenge", "verify_rspauth"]

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')
_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


@dataclass(frozen=True)
class ChallengeParams:
    """The parameters of one ``Digest`` challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for match in _PARAM.finditer(text):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        out[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return out


def parse_challenge(value: str) -> ChallengeParams:
    """Parse a WWW-Authenticate / Proxy-Authenticate value."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError("not a Digest challenge")
    params = _params(rest)
    qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
    return ChallengeParams(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def _hash(algorithm: str, data: bytes) -> str:
    """H(data) with the hash of ``algorithm`` (its -sess suffix ignored)."""
    return hashlib.new(_HASHES[algorithm.upper().removesuffix("-SESS")], data).hexdigest()


def _h(algorithm: str, text: str) -> str:
    return _hash(algorithm, text.encode("utf-8"))


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _response(
    challenge: ChallengeParams,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str,
    body: bytes,
) -> str:
    alg = challenge.algorithm
    ha1 = _h(alg, f"{username}:{challenge.realm}:{password}")
    if alg.upper().endswith("-SESS"):
        ha1 = _h(alg, f"{ha1}:{challenge.nonce}:{cnonce}")
    a2 = f"{method}:{uri}:{_hash(alg, body)}" if qop == "auth-int" else f"{method}:{uri}"
    ha2 = _h(alg, a2)
    if qop is None:
        return _h(alg, f"{ha1}:{challenge.nonce}:{ha2}")
    return _h(alg, f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def answer_challenge(
    challenge: ChallengeParams,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    body: bytes = b"",
    nc: int = 1,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``."""
    if qop is None and challenge.qop:
        qop = "auth" if "auth" in challenge.qop else challenge.qop[0]
    if qop is None and challenge.algorithm.upper().endswith("-SESS"):
        raise ValueError("a -sess algorithm needs qop: its HA1 covers the cnonce, which is only sent with qop")
    cnonce = cnonce or os.urandom(8).hex()
    nc_value = f"{nc:08x}"
    response = _response(
        challenge,
        username=username,
        password=password,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_value,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_q(username)}",
        f"realm={_q(challenge.realm)}",
        f"nonce={_q(challenge.nonce)}",
        f"uri={_q(uri)}",
        f"response={_q(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_value}", f"cnonce={_q(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_q(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def verify_rspauth(
    authentication_info: str,
    challenge: ChallengeParams,
    *,
    username: str,
    password: str,
    uri: str,
) -> bool:
    """Check the server's ``rspauth`` (mutual authentication, RFC 7616 section 3.5)."""
    info = _params(authentication_info)
    if "rspauth" not in info:
        return False
    expected = _response(
        challenge,
        username=username,
        password=password,
        method="",
        uri=uri,
        qop=info.get("qop"),
        nc=info.get("nc", ""),
        cnonce=info.get("cnonce", ""),
        body=b"",
    )
    return expected == info["rspauth"]
