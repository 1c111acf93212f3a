"""Does the digest ``uri`` name the Request-URI? (RFC 3261 sections 22.4 and 19.1.4).

RFC 3261 section 22.4 has the server check that the ``uri`` parameter matches
the Request-URI. Phones and proxies may write the same SIP URI differently
(host case, escaping, parameter order), so SIP and SIPS URIs are compared by
the equivalence rules of section 19.1.4::

    - scheme and host compare case-insensitively; user and password
      compare case-sensitively after %-decoding;
    - an explicit port never equals an absent one;
    - user, ttl, method, maddr and transport parameters must match if
      either URI has them; other parameters are compared only when both
      have them;
    - header components must be equal as a set.

Any other scheme (tel:, an HTTP path) must match exactly.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["uris_match"]

_STRICT_PARAMS = frozenset({"user", "ttl", "method", "maddr", "transport"})


@dataclass(frozen=True, slots=True)
class _SipUri:
    scheme: str
    userinfo: str | None
    host: str
    port: str | None
    params: dict[str, str]
    headers: frozenset[tuple[str, str]]


def _parse(uri: str) -> _SipUri | None:
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        return None
    rest, _, header_part = rest.partition("?")
    userinfo: str | None = None
    if "@" in rest:
        raw_userinfo, rest = rest.rsplit("@", 1)
        userinfo = urllib.parse.unquote(raw_userinfo)
    hostport, *param_parts = rest.split(";")
    if hostport.startswith("["):
        host, _, after = hostport.partition("]")
        host += "]"
        port = after[1:] if after.startswith(":") else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    params: dict[str, str] = {}
    for part in param_parts:
        name, _, value = part.partition("=")
        params[urllib.parse.unquote(name).lower()] = urllib.parse.unquote(value).lower()
    headers = frozenset(
        (urllib.parse.unquote(n).lower(), urllib.parse.unquote(v))
        for n, _, v in (h.partition("=") for h in header_part.split("&") if h)
    )
    return _SipUri(scheme, userinfo, urllib.parse.unquote(host).lower(), port, params, headers)


def uris_match(digest_uri: str, request_uri: str) -> bool:
    """True when both strings name the same resource under RFC 3261's URI equality."""
    if digest_uri == request_uri:
        return True
    left, right = _parse(digest_uri), _parse(request_uri)
    if left is None or right is None:
        return False
    if (left.scheme, left.userinfo, left.host, left.port, left.headers) != (
        right.scheme,
        right.userinfo,
        right.host,
        right.port,
        right.headers,
    ):
        return False
    for name in left.params.keys() | right.params.keys():
        in_both = name in left.params and name in right.params
        if in_both and left.params[name] != right.params[name]:
            return False
        if not in_both and name in _STRICT_PARAMS:
            return False
    return True
