"""A small SIP user agent over UDP for the end-to-end tests: hand-built requests, parsed responses.

It knows nothing of digest: the tests compute answers with an independent
implementation (httpx's DigestAuth) and pass the header in.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field

import httpx

__all__ = ["SipRequest", "SipResponse", "SipUA", "SipUAS", "httpx_digest"]


@dataclass(frozen=True)
class SipResponse:
    """A parsed SIP response."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    raw: str

    def all(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        values = self.all(name)
        return values[0] if values else None


@dataclass(frozen=True)
class SipRequest:
    """A parsed SIP request, as received by :class:`SipUAS`."""

    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    raw: str
    source: tuple[str, int]

    def all(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


def _head(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    lines = text.split("\r\n\r\n", 1)[0].split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], tuple(headers)


def parse_response(data: bytes) -> SipResponse:
    """Parse one SIP response datagram."""
    text = data.decode("utf-8", "replace")
    first, headers = _head(text)
    _, status, reason = first.split(" ", 2)
    return SipResponse(int(status), reason, headers, text)


@dataclass
class SipUA:
    """One UDP socket on 127.0.0.1 talking to ``proxy``."""

    proxy: tuple[str, int]
    user: str = "alice"
    domain: str = "example.test"
    sock: socket.socket = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        """The local UDP port."""
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def build(
        self,
        method: str,
        uri: str,
        *,
        call_id: str,
        cseq: int,
        branch: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: str = "",
        to: str | None = None,
        cseq_method: str | None = None,
    ) -> bytes:
        """The bytes of one request."""
        to_uri = to or (f"sip:{self.user}@{self.domain}" if method == "REGISTER" else uri)
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
            f"To: <{to_uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if body:
            lines.append("Content-Type: text/plain")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def send(self, data: bytes) -> None:
        """Send one datagram to the proxy."""
        self.sock.sendto(data, self.proxy)

    def receive(self, timeout: float) -> SipResponse | None:
        """The next response within ``timeout`` seconds, or None."""
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return parse_response(data)

    def request(
        self,
        method: str,
        uri: str,
        *,
        call_id: str | None = None,
        cseq: int = 1,
        headers: tuple[tuple[str, str], ...] = (),
        body: str = "",
        timeout: float = 5.0,
    ) -> SipResponse:
        """Send a request (retransmitting as RFC 3261 timer A would) and return its final response.

        A non-2xx final response to an INVITE is acknowledged, as a UA must.
        """
        call_id = call_id or uuid.uuid4().hex
        branch = uuid.uuid4().hex
        data = self.build(method, uri, call_id=call_id, cseq=cseq, branch=branch, headers=headers, body=body)
        deadline = time.monotonic() + timeout
        interval = 0.5
        self.send(data)
        next_send = time.monotonic() + interval
        while time.monotonic() < deadline:
            response = self.receive(max(0.01, min(next_send, deadline) - time.monotonic()))
            if response is None:
                if time.monotonic() >= next_send:
                    self.send(data)
                    interval = min(interval * 2, 4.0)
                    next_send = time.monotonic() + interval
                continue
            if response.status < 200 or f"branch=z9hG4bK{branch}" not in response.raw:
                continue
            if method == "INVITE" and response.status >= 300:
                to = response.get("To") or ""
                ack = self.build("ACK", uri, call_id=call_id, cseq=cseq, branch=branch).replace(
                    f"To: <{uri}>".encode(), f"To: {to}".encode()
                )
                self.send(ack)
            return response
        raise TimeoutError(f"no final response to {method} {uri} within {timeout}s")


@dataclass
class SipUAS:
    """A called party on a UDP socket: the test reads each request and answers it by hand."""

    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    @property
    def uri(self) -> str:
        """A SIP URI reaching this UAS."""
        return f"sip:bob@127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def receive(self, timeout: float = 5.0, method: str | None = None) -> SipRequest:
        """The next request (of ``method``, skipping others and responses) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                raise TimeoutError(f"no {method or 'request'} within {timeout}s") from None
            text = data.decode("utf-8", "replace")
            first, headers = _head(text)
            if first.startswith("SIP/2.0"):
                continue
            verb, uri, _ = first.split(" ", 2)
            if method is None or verb == method:
                return SipRequest(verb, uri, headers, text, source)

    def reply(self, request: SipRequest, status: int, reason: str, to_tag: str = "uas") -> None:
        """Answer ``request`` (copying Via, From, To, Call-ID and CSeq)."""
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in request.all(name):
                tagged = name == "To" and status > 100 and ";tag=" not in value
                lines.append(f"{name}: {value};tag={to_tag}" if tagged else f"{name}: {value}")
        lines += [f"Contact: <{self.uri}>", "Content-Length: 0"]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), request.source)


def httpx_digest(challenge: str, *, method: str, uri: str, username: str, password: str, status: int = 401) -> str:
    """The credentials answering ``challenge``, computed by httpx's DigestAuth (not by sipauth's code).

    httpx answers an HTTP 401; it builds the digest ``uri`` from the URL's path,
    so the SIP Request-URI is given as the path of an opaque ``urn:`` URL.
    """
    auth = httpx.DigestAuth(username, password)
    request = httpx.Request(method, f"urn:{uri}")
    flow = auth.sync_auth_flow(request)
    next(flow)
    challenged = httpx.Response(401, headers={"WWW-Authenticate": challenge}, request=request)
    answered = flow.send(challenged)
    return str(answered.headers["Authorization"])
