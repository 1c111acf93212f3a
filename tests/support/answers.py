"""Build a UA's answer to a sipauth challenge, for tests."""

from __future__ import annotations

from collections.abc import Sequence

from sipauth_client import answer_challenge, auth_pb2, parse_challenge

__all__ = ["answer_for", "pick"]


def pick(challenge: auth_pb2.IssueChallengeResponse, algorithm: str) -> str:
    """The header value of ``challenge`` that offers ``algorithm``."""
    for value in challenge.header_values:
        if parse_challenge(value).algorithm.upper() == algorithm.upper():
            return value
    raise AssertionError(f"{algorithm} is not offered in {list(challenge.header_values)}")


def answer_for(
    challenge: auth_pb2.IssueChallengeResponse | str,
    *,
    username: str,
    password: str,
    method: str = "REGISTER",
    uri: str = "sip:example.test",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    algorithm: str | None = None,
    qop: str | None = None,
    body: bytes = b"",
) -> str:
    """Authorization value answering the first (or the ``algorithm``) challenge value."""
    if isinstance(challenge, str):
        value = challenge
    else:
        values: Sequence[str] = challenge.header_values
        value = pick(challenge, algorithm) if algorithm else values[0]
    return answer_challenge(
        parse_challenge(value),
        username=username,
        password=password,
        method=method,
        uri=uri,
        nc=nc,
        cnonce=cnonce,
        qop=qop,
        body=body,
    )
