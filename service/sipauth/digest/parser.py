r"""Parse the value of an Authorization / Proxy-Authorization header.

RFC 3261 section 25.1 (SIP's grammar for the same RFC 2617 credentials)::

    credentials      =  ("Digest" LWS digest-response) / other-response
    digest-response  =  dig-resp *(COMMA dig-resp)
    dig-resp         =  username / realm / nonce / digest-uri
                        / dresponse / algorithm / cnonce
                        / opaque / message-qop
                        / nonce-count / auth-param
    auth-param       =  auth-param-name EQUAL ( token / quoted-string )
    nc-value         =  8LHEX
    quoted-string    =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
    qdtext           =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
    quoted-pair      =  "\\" (%x00-09 / %x0B-0C / %x0E-7F)
    token            =  1*(alphanum / "-" / "." / "!" / "%" / "*"
                        / "_" / "+" / "`" / "'" / "~" )

RFC 7616 section 3.4 adds ``userhash`` and ``username*`` (section 3.4.4,
an RFC 8187 ext-value). Tolerant where real phones differ harmlessly (names
in any case, quoted or bare values, folded whitespace); strict where a
difference could change the meaning (duplicate parameters, control
characters, unbalanced quotes, malformed ``nc``). Every size is bounded.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .algorithms import Algorithm
from .errors import MalformedCredentials

__all__ = ["Credentials", "Limits", "parse_credentials"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on untrusted input; anything larger is refused before parsing."""

    max_header_length: int = 8192
    max_parameters: int = 32
    max_value_length: int = 2048


DEFAULT_LIMITS = Limits()

_TCHARS = r"[A-Za-z0-9\-.!%*_+`'~]+"
# One parameter: name, "=", a quoted-string (escapes allowed) or a token-ish
# bare value, then a comma or the end. Bare values accept a few characters
# beyond RFC 3261's token ("/", ":", "@") because phones send bare URIs.
# Runs of plain characters are taken whole and possessively (``++``, ``*+``): a quoted value costs
# one step per run rather than per character, and an unterminated quote fails in linear time.
_PARAM_PATTERN = (
    r"[ \t]*({group}" + _TCHARS + r")[ \t]*=[ \t]*"
    r"(?:\"({group}(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]++|\\[^\x0a\x0d])*+)\""
    r"|({group}[A-Za-z0-9\-.!%*_+`'~/:@]+))"
    r"[ \t]*({group},|$)"
)
_PARAM = re.compile(_PARAM_PATTERN.format(group=""))
# The whole list at once, each parameter taken atomically (no backtracking into one): when it
# matches, findall() hands every parameter over in one call; when not, the loop finds the fault.
_PARAMS = re.compile("(?:" + _PARAM_PATTERN.format(group="?:") + ")++")
_SCHEME = re.compile(r"[ \t]*Digest[ \t]+", re.IGNORECASE)
_FOLD = re.compile(r"\r\n[ \t]+")
_UNESCAPE = re.compile(r"\\(.)")
_NC = re.compile(r"[0-9A-Fa-f]{8}")
_HEX = re.compile(r"[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 8187 ext-value: charset "'" [ language ] "'" value-chars
_EXT_VALUE = re.compile(r"(?P<charset>[A-Za-z0-9!#$%&+\-^_`{}~]+)'[A-Za-z0-9\-]*'(?P<chars>[A-Za-z0-9!#$&+\-.^_`|~%]*)")

_MANDATORY = ("realm", "nonce", "uri", "response")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A parsed digest response. Values are unquoted; names are lower case."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm
    qop: str | None = None
    cnonce: str | None = None
    nc: int | None = None
    #: nc exactly as sent: it enters the hash as written (RFC 7616 section 3.4.1).
    nc_value: str | None = None
    opaque: str | None = None
    #: The username is H(username ":" realm) (RFC 7616 section 3.4.4).
    userhash: bool = False
    #: The ``algorithm`` parameter was present (absent means MD5).
    algorithm_explicit: bool = False
    #: Every parameter as received (lower-case names), auth-params included.
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _unquote(raw: str) -> str:
    return _UNESCAPE.sub(r"\1", raw) if "\\" in raw else raw


def _decode_ext_value(raw: str) -> str:
    """Decode an RFC 8187 ext-value such as ``UTF-8''J%C3%A4s%C3%B8n``."""
    match = _EXT_VALUE.fullmatch(raw)
    if match is None or match["charset"].upper() != "UTF-8":
        raise MalformedCredentials("username* must be an RFC 8187 ext-value in UTF-8")
    try:
        value = urllib.parse.unquote(match["chars"], encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedCredentials("username* is not valid UTF-8") from exc
    if _CONTROL.search(value):
        raise MalformedCredentials("username* decodes to a control character")
    return value


def _add_param(params: dict[str, str], name: str, value: str, controls: bool, limits: Limits) -> None:
    if name in params:
        raise MalformedCredentials(f"duplicate digest parameter {name!r}")
    if controls and _CONTROL.search(value):
        # quoted-pair admits escaped control characters; nothing legitimate needs them,
        # and echoing one (cnonce in Authentication-Info) would break the header.
        raise MalformedCredentials(f"digest parameter {name!r} holds a control character")
    if len(value) > limits.max_value_length:
        raise MalformedCredentials(f"digest parameter {name!r} is longer than {limits.max_value_length}")
    if len(params) >= limits.max_parameters:
        raise MalformedCredentials(f"more than {limits.max_parameters} digest parameters")
    params[name] = value


def _split_params(text: str, limits: Limits) -> dict[str, str]:
    params: dict[str, str] = {}
    # Values are pieces of the text (less quoting backslashes): without a control character in the
    # text, none can hold one, and the check per value is skipped.
    controls = _CONTROL.search(text) is not None
    if _PARAMS.fullmatch(text):
        found = _PARAM.findall(text)
        if found and found[-1][3] != ",":
            for name, quoted, bare, _sep in found:
                # A bare value is never empty: an empty one is the quoted alternative.
                _add_param(params, name.lower(), bare or _unquote(quoted), controls, limits)
            return params
    return _split_params_stepwise(text, limits, controls)


def _split_params_stepwise(text: str, limits: Limits, controls: bool) -> dict[str, str]:
    """One parameter at a time: the same result as the fast path, and where it fails, the offset."""
    params: dict[str, str] = {}
    pos = 0
    end = len(text)
    while pos < end:
        match = _PARAM.match(text, pos)
        if match is None:
            raise MalformedCredentials(f"unparseable digest parameter at offset {pos}")
        name, quoted, bare, sep = match.groups()
        _add_param(params, name.lower(), _unquote(quoted) if quoted is not None else bare, controls, limits)
        pos = match.end()
        if sep == "," and pos >= end:
            raise MalformedCredentials("trailing comma after the last digest parameter")
    return params


def _qop_and_nc(params: dict[str, str]) -> tuple[str | None, int | None]:
    """Check qop, nc and cnonce together; return qop (lower case) and nc as a number."""
    qop = params.get("qop")
    cnonce = params.get("cnonce")
    nc_value = params.get("nc")
    nc: int | None = None
    if qop is not None:
        qop = qop.lower()
        if not qop:
            raise MalformedCredentials("qop is empty")
        if cnonce is None or nc_value is None:
            # RFC 7616 section 3.4: cnonce and nc MUST be sent when qop is.
            raise MalformedCredentials("qop requires both cnonce and nc")
    if nc_value is not None:
        if not _NC.fullmatch(nc_value):
            raise MalformedCredentials("nc must be exactly 8 hex digits")
        nc = int(nc_value, 16)
        if nc == 0:
            raise MalformedCredentials("nc must be at least 00000001")
    if cnonce is not None and not cnonce:
        raise MalformedCredentials("cnonce is empty")
    return qop, nc


def parse_credentials(header: str, limits: Limits = DEFAULT_LIMITS) -> Credentials:
    """Parse ``Digest k=v, ...`` into :class:`Credentials`.

    Raises :class:`MalformedCredentials` for anything that is not a complete
    digest response, and :class:`~sipauth.digest.errors.UnsupportedAlgorithm`
    for a well-formed response naming an algorithm we do not implement.
    """
    if not isinstance(header, str):
        raise MalformedCredentials("credentials must be text")
    if len(header) > limits.max_header_length:
        raise MalformedCredentials(f"credentials longer than {limits.max_header_length} characters")
    if "\x00" in header:
        raise MalformedCredentials("credentials contain a NUL character")
    if not header.isascii():
        try:
            header.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedCredentials("credentials are not valid Unicode text") from None
    text = (_FOLD.sub(" ", header) if "\r" in header else header).rstrip(" \t")
    if "\r" in text or "\n" in text:
        raise MalformedCredentials("credentials contain a bare line break")
    scheme = _SCHEME.match(text)
    if scheme is None:
        raise MalformedCredentials("credentials do not use the Digest scheme")
    params = _split_params(text[scheme.end() :], limits)

    missing = [name for name in _MANDATORY if name not in params]
    if "username" not in params and "username*" not in params:
        missing.insert(0, "username")
    if missing:
        raise MalformedCredentials(f"missing digest parameter(s): {', '.join(missing)}")
    if "username" in params and "username*" in params:
        raise MalformedCredentials("username and username* are mutually exclusive")
    username = params["username"] if "username" in params else _decode_ext_value(params["username*"])

    response = params["response"].lower()
    if not _HEX.fullmatch(response) or len(response) not in (32, 64):
        raise MalformedCredentials("response is not a 32 or 64 digit hex digest")

    qop, nc = _qop_and_nc(params)

    userhash_raw = params.get("userhash", "false").lower()
    if userhash_raw not in ("true", "false"):
        raise MalformedCredentials("userhash must be true or false")

    algorithm_raw = params.get("algorithm")
    algorithm = Algorithm.parse(algorithm_raw) if algorithm_raw is not None else Algorithm.MD5
    if algorithm.is_session and qop is None:
        # RFC 7616 section 3.4.2: -sess re-keys HA1 with the cnonce, which is only sent with qop.
        raise MalformedCredentials(f"{algorithm.token} requires qop")

    return Credentials(
        username=username,
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response,
        algorithm=algorithm,
        qop=qop,
        cnonce=params.get("cnonce"),
        nc=nc,
        nc_value=params.get("nc"),
        opaque=params.get("opaque"),
        userhash=userhash_raw == "true",
        algorithm_explicit=algorithm_raw is not None,
        params=MappingProxyType(params),
    )
