"""What a SIP proxy does with a request, decided by sipauth: forward it, or reply.

This module is pure: it builds the VerifyResponse request from what a proxy
has and turns the answer (or the gRPC failure) into a :class:`ProxyDecision`.
The clients' ``authorize`` methods make the call in between.

Header handling (RFC 3261 section 22, RFC 7616, RFC 8760):

- A registrar or UAS (``proxy=False``) reads ``Authorization`` and answers
  401 with one ``WWW-Authenticate`` per offered algorithm; a proxy
  (``proxy=True``) reads ``Proxy-Authorization`` and answers 407 with
  ``Proxy-Authenticate``. Values are copied verbatim, in the server's order.
- A request without credentials for our realm gets the challenge from the
  same single call (the server answers REJECT ``credentials_missing``).
- ACK and CANCEL are never challenged (RFC 3261 section 22.1): they pass.
- On success the proxy removes the credentials it consumed before
  forwarding and adds ``Authentication-Info`` (401 flow; for the 407 flow
  ``Proxy-Authentication-Info``, RFC 7615) to the 2xx response it returns.
- sipauth unreachable or too slow: 503 with ``Retry-After``; any other
  fault: 500 with ``Retry-After``; a request sipauth refuses as malformed: 400.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from .v1 import auth_pb2

__all__ = [
    "Action",
    "ProxyDecision",
    "ProxyRequest",
    "challenge_decision",
    "challenge_type",
    "decision_for",
    "failure_decision",
    "pass_through",
    "pooled_challenge_decision",
    "select_credentials",
    "verify_request_for",
]

#: RFC 3261 section 22.1: these are never challenged.
UNCHALLENGEABLE = frozenset({"ACK", "CANCEL"})

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    500: "Server Internal Error",
    503: "Service Unavailable",
}
# The realm parameter of a Digest credentials value (quoted-string, RFC 7616 section 3.4).
_REALM = re.compile(r'(?:^|[\s,])realm\s*=\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)
# A quoted-pair inside that quoted-string.
_QUOTED_PAIR = re.compile(r"\\(.)")
# Faults that mean "sipauth could not answer in time": the UA should retry later.
_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Verdict names without their prefix, looked up once ("ACCEPT", "REJECT"...).
_VERDICT_NAMES = {value.number: value.name.removeprefix("VERDICT_") for value in auth_pb2.Verdict.DESCRIPTOR.values}


class Action(enum.Enum):
    """What the proxy does next."""

    #: Forward (or locally process) the request.
    FORWARD = "forward"
    #: Answer the request with ``status_code``, ``reason_phrase`` and ``headers``.
    REPLY = "reply"


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """What a proxy has at hand about one SIP request."""

    method: str
    request_uri: str
    #: The Authorization (registrar) or Proxy-Authorization (proxy) value(s); None or empty when absent.
    authorization: str | Sequence[str] | None = None
    body: bytes = b""
    source_ip: str = ""
    call_id: str = ""
    #: The realm to authenticate in; empty means sipauth's default realm.
    realm: str = ""
    #: True for a proxy (407, Proxy-*), False for a registrar or UAS (401, WWW-*).
    proxy: bool = False

    @property
    def credentials_header(self) -> str:
        """The header the credentials arrive in."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


@dataclass(frozen=True, slots=True)
class ProxyDecision:
    """The outcome for one request."""

    action: Action
    #: On REPLY: the status to answer with; 0 on FORWARD.
    status_code: int = 0
    reason_phrase: str = ""
    #: On REPLY: headers to add to the reply, in order (one per challenge value).
    headers: tuple[tuple[str, str], ...] = ()
    #: On FORWARD: headers to add to the 2xx response to this request (mutual authentication).
    response_headers: tuple[tuple[str, str], ...] = ()
    #: On FORWARD: the credentials header name and the exact value to remove before forwarding.
    consumed: tuple[str, str] | None = None
    #: The authenticated user (on FORWARD after a check, and on 403 for a known user).
    username: str = ""
    identity: auth_pb2.Identity | None = None
    #: sipauth's verdict name and reason code, for logs ("ACCEPT", "credentials_missing", "unavailable"...).
    verdict: str = ""
    reason: str = ""
    #: True when this decision comes from a failure to reach sipauth (not from a verdict).
    fault: bool = False

    @property
    def forward(self) -> bool:
        """Whether the proxy goes on with the request."""
        return self.action is Action.FORWARD


def select_credentials(authorization: str | Sequence[str] | None, realm: str) -> str:
    """The credentials value for ``realm`` among those a request carries ('' when none).

    A request can carry credentials for several realms (one per proxy on the
    path, RFC 3261 section 22.3); with no realm configured the first one is used.
    """
    if not authorization:
        return ""
    values = (authorization,) if isinstance(authorization, str) else authorization
    if not realm:
        # Blank values are absent headers; the first real one is taken.
        for value in values:
            if value.strip():
                return value
        return ""
    for value in values:
        match = _REALM.search(value)
        if match is None:
            continue
        found = match.group(1)
        if "\\" in found:
            found = _QUOTED_PAIR.sub(r"\1", found)
        if found == realm:
            return value
    return ""


def pass_through(request: ProxyRequest) -> ProxyDecision | None:
    """A FORWARD decision for ACK and CANCEL, which are never challenged; None for the rest."""
    if request.method.upper() in UNCHALLENGEABLE:
        return ProxyDecision(Action.FORWARD, verdict="NOT_CHALLENGEABLE", reason="method_not_challengeable")
    return None


def challenge_type(proxy: bool) -> auth_pb2.ChallengeType:
    """PROXY (407, Proxy-*) for a proxy, WWW (401) for a registrar or UAS."""
    return auth_pb2.CHALLENGE_TYPE_PROXY if proxy else auth_pb2.CHALLENGE_TYPE_WWW


def verify_request_for(request: ProxyRequest, credentials: str | None = None) -> auth_pb2.VerifyResponseRequest:
    """The VerifyResponse request for ``request`` (empty credentials ask for a challenge).

    ``credentials``: the value :func:`select_credentials` already chose for it, if known.
    """
    if credentials is None:
        credentials = select_credentials(request.authorization, request.realm)
    return auth_pb2.VerifyResponseRequest(
        authorization=credentials,
        method=request.method,
        request_uri=request.request_uri,
        body=request.body,
        realm=request.realm,
        type=challenge_type(request.proxy),
        source_ip=request.source_ip,
        call_id=request.call_id,
    )


def _reply(
    status: int,
    verdict: str,
    reason: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    username: str = "",
    identity: auth_pb2.Identity | None = None,
    fault: bool = False,
) -> ProxyDecision:
    return ProxyDecision(
        Action.REPLY,
        status_code=status,
        reason_phrase=_REASONS[status],
        headers=tuple(headers),
        username=username,
        identity=identity,
        verdict=verdict,
        reason=reason,
        fault=fault,
    )


def decision_for(
    request: ProxyRequest, response: auth_pb2.VerifyResponseResponse, credentials: str | None = None
) -> ProxyDecision:
    """Turn sipauth's verdict on ``request`` into what the proxy does.

    ``credentials``: the value :func:`select_credentials` chose for the call, if known.
    """
    # A verdict this client does not know (a newer server) is named by its number, never raised on.
    verdict = _VERDICT_NAMES.get(response.verdict, str(response.verdict))
    identity = response.identity if response.HasField("identity") else None
    if response.verdict == auth_pb2.VERDICT_ACCEPT:
        info_header = "Proxy-Authentication-Info" if request.proxy else "Authentication-Info"
        info = ((info_header, response.authentication_info),) if response.authentication_info else ()
        return ProxyDecision(
            Action.FORWARD,
            response_headers=info,
            consumed=(
                request.credentials_header,
                select_credentials(request.authorization, request.realm) if credentials is None else credentials,
            ),
            username=response.username,
            identity=identity,
            verdict=verdict,
            reason=response.reason,
        )
    if response.verdict in (auth_pb2.VERDICT_REJECT, auth_pb2.VERDICT_STALE):
        challenge = response.challenge
        headers = [(challenge.header_name, value) for value in challenge.header_values]
        status = 407 if request.proxy else 401
        return _reply(status, verdict, response.reason, headers)
    if response.verdict in (auth_pb2.VERDICT_LOCKED, auth_pb2.VERDICT_FORBIDDEN):
        return _reply(403, verdict, response.reason, username=response.username, identity=identity)
    if response.verdict == auth_pb2.VERDICT_INVALID:
        return _reply(400, verdict, response.reason)
    # An unknown verdict from a newer server is never taken as acceptance.
    return _reply(500, verdict, response.reason or "unknown_verdict", [("Retry-After", "5")], fault=True)


def challenge_decision(request: ProxyRequest, header_name: str, values: Sequence[str]) -> ProxyDecision:
    """The 401/407 for a request without credentials, from a challenge kept in the client's pool."""
    return pooled_challenge_decision(request.proxy, header_name, values)


def pooled_challenge_decision(proxy: bool, header_name: str, values: Sequence[str]) -> ProxyDecision:
    """The 401 (407 with ``proxy``) for a request without credentials, from a pooled challenge."""
    status = 407 if proxy else 401
    return _reply(status, "REJECT", "credentials_missing", [(header_name, value) for value in values])


def failure_decision(code: grpc.StatusCode, *, retry_after: int = 5) -> ProxyDecision:
    """The reply when the VerifyResponse call failed with ``code``."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # sipauth refuses the request's fields themselves (an over-long Request-URI, say).
        return _reply(400, "", "invalid_argument", fault=True)
    status = 503 if code in _UNAVAILABLE else 500
    return _reply(status, "", code.name.lower(), [("Retry-After", str(retry_after))], fault=True)
