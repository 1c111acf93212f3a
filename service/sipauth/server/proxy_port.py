"""The proxies' port: AuthService over a lean HTTP/2 server on the event loop (``proxy_listen``).

A proxy worker (a Kamailio child) makes one call after another on one
``Exchange`` stream. grpc.aio costs the server about 300 µs of CPU per
message of such a stream here (C-core batches, the completion queue, its
poller thread waking the event loop), several times what the decision
itself costs. This port serves the same service with the h2 state machine
(RFC 9113: framing, flow control, HPACK, stream states) and gRPC's HTTP/2
mapping written out below, on the same event loop as the decisions, at a
fraction of that:

- ``Exchange``, ``IssueChallenge`` and ``VerifyResponse``, answered by the
  same :class:`~sipauth.server.servicer.AuthServicer` code as on the main
  port: same answers, metrics, audit lines and status codes. Any other
  method is UNIMPLEMENTED; health and reflection stay on the main port.
- Requests: ``POST``, ``content-type: application/grpc[+proto]``,
  uncompressed messages (``grpc-encoding: identity`` or none; a compressed
  message is UNIMPLEMENTED), each at most the main port's message limit.
- Answers: ``:status 200`` headers, length-prefixed messages, then trailers
  with ``grpc-status`` (and ``grpc-message``, percent-encoded), or a
  trailers-only answer when the call fails before any message.
- TLS exactly as on the main port (``tls``: the same files, reloaded when
  they change; client certificates checked against ``tls.allowed_clients``),
  with ALPN ``h2``; plaintext is for loopback (or ``allow_plaintext``).
- Bounded: streams per connection, calls in flight per connection (reading
  pauses beyond it), header list size, message size. A peer that breaks the
  protocol gets GOAWAY and the connection is closed; a bad message ends its
  stream with INVALID_ARGUMENT, as on the main port.
- Shutdown: GOAWAY (no new stream), the calls in flight are answered within
  the grace period, then the connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from google.protobuf.message import DecodeError, Message

from sipauth_client.v1 import auth_pb2

from ..client_allowlist import ClientAllowlist, PeerNames
from .caller import current_caller
from .servicer import EXCHANGE_IN_FLIGHT, SERVICE_NAME, AuthServicer, request_id_from

__all__ = ["ProxyPort", "start_proxy_port"]

log = logging.getLogger("sipauth.server.proxy_port")

_PREFIX = struct.Struct(">BI")  # gRPC message: compressed flag, length
#: Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_STREAMS = 128
#: Calls in flight on one connection beyond which it is not read until some are answered.
MAX_IN_FLIGHT = 4 * EXCHANGE_IN_FLIGHT
_MAX_HEADER_LIST = 16 << 10
#: Unfinished messages one connection may hold at once, all its streams together (data is acknowledged
#: as it arrives, so flow control alone would not bound it): past it, the stream that goes over is refused.
MAX_BUFFERED = 8 << 20
# Below this a stream's unfinished message is not worth adding up the connection's.
_BUFFER_CHECK = 64 << 10
#: How long a refused call's answer waits for its request to begin.
_REFUSAL_DELAY = 0.1
_WINDOW = 1 << 20
_EXCHANGE = f"/{SERVICE_NAME}/Exchange"
_UNARY: dict[str, type[Message]] = {
    f"/{SERVICE_NAME}/IssueChallenge": auth_pb2.IssueChallengeRequest,
    f"/{SERVICE_NAME}/VerifyResponse": auth_pb2.VerifyResponseRequest,
}
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_OK_TRAILERS = ((b"grpc-status", b"0"),)


@dataclass(eq=False)
class _Stream:
    """One call: its method, what has arrived of its messages, and what it still owes."""

    stream_id: int
    path: str
    request_id: str
    buffer: bytearray = field(default_factory=bytearray)
    messages: list[bytes] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    number: int = 0
    remote_ended: bool = False
    headers_sent: bool = False
    closed: bool = False
    #: Answer bytes waiting for the peer's flow-control window.
    blocked: bytearray = field(default_factory=bytearray)
    trailers: tuple[tuple[bytes, bytes], ...] | None = None
    #: A call refused from its headers, answered when its request has begun (see _on_request).
    refusal: tuple[grpc.StatusCode, str] | None = None


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2 decides what the bytes mean; this class answers the calls."""

    def __init__(self, port: ProxyPort) -> None:
        self._port = port
        self._servicer = port.servicer
        self._h2 = h2.connection.H2Connection(_H2_CONFIG)
        self._transport: asyncio.Transport | None = None
        # Looked up once: asyncio.get_running_loop() makes a getpid() system call each time (Python 3.11).
        self._loop = asyncio.get_running_loop()
        self._streams: dict[int, _Stream] = {}
        self._in_flight = 0
        self._reading_paused = False
        self._flush_due = False
        self._context = contextvars.copy_context()
        self._closed = False
        self._denied = False

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the peer (its client certificate, under mutual TLS), then send our SETTINGS."""
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        identity = self._port.admit(transport)
        # A certificate outside the allowlist gets PERMISSION_DENIED on every call, as on the main port.
        self._denied = identity is None
        if identity:
            self._context.run(current_caller.set, identity)
        self._port.connections.add(self)
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_WINDOW)
        self._flush()
        if self._port.draining:
            self.drain()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel what this connection's calls still do: nobody can get their answers."""
        self._closed = True
        self._port.connections.discard(self)
        if self._port.draining and not self._port.connections:
            self._port.closed.set()
        for stream in self._streams.values():
            for task in stream.tasks:
                task.cancel()
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        """Feed h2, act on its events, send what they produced (in one write)."""
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY naming the error: send it and hang up.
            log.info("proxy port: HTTP/2 protocol error from a peer", extra={"error": type(exc).__name__})
            self._flush()
            self._close()
            return
        try:
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    self._on_data(event)
                elif isinstance(event, h2.events.RequestReceived):
                    self._on_request(event)
                elif isinstance(event, h2.events.StreamEnded):
                    self._on_end(event.stream_id)
                elif isinstance(event, h2.events.WindowUpdated):
                    self._on_window()
                elif isinstance(event, h2.events.StreamReset):
                    self._forget(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self._close()
                    return
        except Exception:
            # A bug here, not the peer's fault: this connection ends (its calls with it), the port goes on.
            log.exception("proxy port: handling a peer's frames failed; closing its connection")
            self._close()
            return
        self._flush()

    def pause_writing(self) -> None:
        """The peer does not read its answers: stop reading its questions until it does."""
        self._pause()

    def resume_writing(self) -> None:
        """The peer reads again."""
        self._resume()

    # -- streams -------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        headers = dict(event.headers or ())
        stream_id = event.stream_id
        if self._port.draining:
            # Refused before any work: the client may send it again, to another server (RFC 9113 section 8.7).
            self._h2.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        path = headers.get(b":path", b"").decode("ascii", "replace")
        stream = _Stream(stream_id, path, request_id_from(_text(headers.get(b"x-request-id"))))
        self._streams[stream_id] = stream
        refusal = _refusal(headers, path, denied=self._denied)
        if refusal is not None and not event.stream_ended:
            # Answered once the request's first message or its end arrives (or soon, if neither does):
            # a client still sending when the answer comes may report its own failed send instead of it.
            stream.refusal = refusal
            self._loop.call_later(_REFUSAL_DELAY, self._refuse_pending, stream)
        elif refusal is not None:
            self._refuse(stream, *refusal)
        elif event.stream_ended:
            self._on_end(stream_id)

    def _refuse_pending(self, stream: _Stream) -> None:
        if stream.refusal is not None and not stream.closed:
            self._refuse(stream, *stream.refusal)
            self._flush()

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.closed:
            return  # a call already answered (refused): what it still sends is ignored
        if stream.refusal is not None:
            self._refuse(stream, *stream.refusal)
            return
        if stream.remote_ended:
            return  # an Exchange stream of a draining server takes no new message (drain())
        stream.buffer += event.data or b""
        buffer = stream.buffer
        if len(buffer) > _BUFFER_CHECK and sum(len(other.buffer) for other in self._streams.values()) > MAX_BUFFERED:
            buffer.clear()
            self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, "too much unfinished data on this connection")
            return
        limit = self._port.max_message
        while len(buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed:
                self._refuse(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
                return
            if length > limit:
                self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than {limit} bytes")
                return
            end = _PREFIX.size + length
            if len(buffer) < end:
                break
            message = bytes(buffer[_PREFIX.size : end])
            del buffer[:end]
            if stream.path == _EXCHANGE:
                self._exchange_message(stream, message)
            else:
                stream.messages.append(message)
                if len(stream.messages) > 1:
                    self._refuse(stream, grpc.StatusCode.INTERNAL, "a unary call carries one message")
                    return
            if stream.closed:
                return

    def _on_end(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.closed:
            return
        stream.remote_ended = True
        if stream.refusal is not None:
            self._refuse(stream, *stream.refusal)
        elif stream.buffer:
            self._refuse(stream, grpc.StatusCode.INTERNAL, "the stream ended inside a message")
        elif stream.path == _EXCHANGE:
            self._finish_if_done(stream)
        elif len(stream.messages) != 1:
            self._refuse(stream, grpc.StatusCode.INTERNAL, "a unary call carries one message")
        else:
            self._unary(stream, stream.messages.pop())

    def _exchange_message(self, stream: _Stream, data: bytes) -> None:
        try:
            message = auth_pb2.ExchangeRequest.FromString(data)
        except DecodeError:
            # The framing can no longer be trusted: the stream ends, as on the main port.
            self._refuse(stream, grpc.StatusCode.INVALID_ARGUMENT, "a message is not a valid ExchangeRequest")
            return
        stream.number += 1
        request_id = f"{stream.request_id}.{stream.number}"
        self._start(stream, self._answer_exchange(stream, message, request_id))

    async def _answer_exchange(self, stream: _Stream, message: auth_pb2.ExchangeRequest, request_id: str) -> None:
        response = await self._servicer.exchange_one(message, request_id)
        self._send_message(stream, response.SerializeToString())

    def _unary(self, stream: _Stream, data: bytes) -> None:
        try:
            request = _UNARY[stream.path].FromString(data)
        except DecodeError:
            self._refuse(stream, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message")
            return
        self._start(stream, self._answer_unary(stream, request))

    async def _answer_unary(self, stream: _Stream, request: Message) -> None:
        response, code, details = await self._servicer.unary_one(request, stream.request_id)
        request_id = (b"x-request-id", stream.request_id.encode("ascii", "replace"))
        if response is None:
            self._end(stream, (*_status_trailers(code, details), request_id))
            return
        self._send_message(stream, response.SerializeToString())
        self._end(stream, (*_OK_TRAILERS, request_id))

    def _start(self, stream: _Stream, work: Awaitable[None]) -> None:
        """Run one call's answer as its own task, in its own copy of the connection's context."""
        task: asyncio.Task[None] = self._loop.create_task(
            work,  # type: ignore[arg-type]
            context=self._context.copy(),
        )
        stream.tasks.add(task)
        self._in_flight += 1
        if self._in_flight >= MAX_IN_FLIGHT:
            self._pause()
        task.add_done_callback(lambda done: self._done(stream, done))

    def _done(self, stream: _Stream, task: asyncio.Task[None]) -> None:
        stream.tasks.discard(task)
        self._in_flight -= 1
        self._resume()
        if not task.cancelled() and task.exception() is not None:
            # The servicer maps every failure to a status; this is a bug here: fail the call, not the process.
            log.error("proxy port: answering a call failed", exc_info=task.exception())
            self._refuse(stream, grpc.StatusCode.INTERNAL, "internal error")
        elif stream.path == _EXCHANGE:
            self._finish_if_done(stream)
        self._schedule_flush()

    def _finish_if_done(self, stream: _Stream) -> None:
        if stream.remote_ended and not stream.tasks and not stream.closed:
            self._end(stream, _OK_TRAILERS)

    # -- sending -------------------------------------------------------------

    def _send_message(self, stream: _Stream, payload: bytes) -> None:
        if stream.closed or self._closed:
            return
        if not stream.headers_sent:
            self._h2.send_headers(stream.stream_id, _RESPONSE_HEADERS)
            stream.headers_sent = True
        stream.blocked += _PREFIX.pack(0, len(payload))
        stream.blocked += payload
        self._drain_stream(stream)
        self._schedule_flush()

    def _end(self, stream: _Stream, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        """Close the stream with ``trailers`` once every answer before them has left."""
        if stream.closed or self._closed:
            return
        stream.closed = True
        stream.buffer.clear()
        for task in stream.tasks:
            task.cancel()
        if not stream.headers_sent:
            # Trailers-only: one HEADERS frame with the status, ending the stream.
            self._send_trailers(stream, _RESPONSE_HEADERS + trailers)
            return
        stream.trailers = trailers
        self._drain_stream(stream)
        self._schedule_flush()

    def _send_trailers(self, stream: _Stream, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # the peer reset it meanwhile
            self._h2.send_headers(stream.stream_id, headers, end_stream=True)
            if not stream.remote_ended:
                # Answered before the request ended: the rest of it is not wanted (RFC 9113 section 8.1).
                self._h2.reset_stream(stream.stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
        self._streams.pop(stream.stream_id, None)
        self._schedule_flush()

    def _drain_stream(self, stream: _Stream) -> None:
        """Send what the flow-control windows allow; the trailers go once nothing is left before them."""
        h2c = self._h2
        stream_id = stream.stream_id
        blocked = stream.blocked
        try:
            while blocked:
                window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk = bytes(blocked[:window])
                del blocked[:window]
                h2c.send_data(stream_id, chunk)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._forget(stream_id)
            return
        if stream.trailers is not None:
            self._send_trailers(stream, stream.trailers)

    def _on_window(self) -> None:
        for stream in list(self._streams.values()):
            if stream.blocked or stream.trailers is not None:
                self._drain_stream(stream)

    def _refuse(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        self._end(stream, _status_trailers(code, details))

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.closed = True
            for task in stream.tasks:
                task.cancel()

    def _schedule_flush(self) -> None:
        """Answers finished in one turn of the event loop leave in one write at its end."""
        if not self._flush_due and not self._closed:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)
        if self._port.draining and not self._streams and self._transport is not None and not self._closed:
            self._h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._transport.write(self._h2.data_to_send())
            self._close()

    # -- flow of the connection ----------------------------------------------

    def _pause(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if (
            self._reading_paused
            and self._in_flight < MAX_IN_FLIGHT // 2
            and self._transport is not None
            and not self._closed
            and not self._transport.is_closing()
        ):
            self._reading_paused = False
            self._transport.resume_reading()

    def drain(self) -> None:
        """Shutting down: no new stream; those open are answered, then GOAWAY, and the connection closes.

        An open Exchange stream takes no new message, as on the main port: it
        ends once the calls it has are answered. (h2 sends no frame of an open
        stream after its GOAWAY, so the GOAWAY comes last.)
        """
        if self._closed:
            return
        for stream in list(self._streams.values()):
            if stream.path == _EXCHANGE:
                stream.remote_ended = True
                self._finish_if_done(stream)
        self._schedule_flush()

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def abort(self) -> None:
        """End now (the grace period is over)."""
        if self._transport is not None:
            self._transport.abort()


def _refusal(headers: dict[bytes, bytes], path: str, *, denied: bool) -> tuple[grpc.StatusCode, str] | None:
    """Why a call cannot be served, from its headers alone; None when it can."""
    if denied:
        return grpc.StatusCode.PERMISSION_DENIED, "this client certificate is not allowed"
    if headers.get(b":method") != b"POST":
        return grpc.StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests"
    if not _is_grpc(headers.get(b"content-type", b"")):
        return grpc.StatusCode.INTERNAL, "content-type must be application/grpc"
    if headers.get(b"grpc-encoding", b"identity") != b"identity":
        return grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported"
    if path != _EXCHANGE and path not in _UNARY:
        return grpc.StatusCode.UNIMPLEMENTED, f"method {path[:200]} is not served on this port"
    return None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value is not None else ""


def _is_grpc(content_type: bytes) -> bool:
    return content_type == b"application/grpc" or content_type.startswith((b"application/grpc+", b"application/grpc;"))


def _status_trailers(code: grpc.StatusCode, details: str) -> tuple[tuple[bytes, bytes], ...]:
    # grpc-message is percent-encoded (gRPC's HTTP/2 mapping): printable ASCII but "%" passes as is.
    message = quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")
    return ((b"grpc-status", str(code.value[0]).encode("ascii")), (b"grpc-message", message))


_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _peer_names(transport: asyncio.BaseTransport) -> PeerNames | None:
    """The verified client certificate's names, from the TLS session (None without one)."""
    certificate = transport.get_extra_info("peercert")
    if not certificate:
        return None
    dns = tuple(value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
    uris = tuple(value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI")
    common_name = ""
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
    return PeerNames(dns=dns, uris=uris, common_name=common_name)


@dataclass(eq=False)
class ProxyPort:
    """The listening socket, its connections, and how they end."""

    servicer: AuthServicer
    max_message: int
    #: Who may call under mutual TLS (an empty list admits any certificate the client CA signed).
    allowlist: ClientAllowlist = field(default_factory=lambda: ClientAllowlist(()))
    #: Whether the TLS setup requires client certificates (mutual TLS).
    mutual: bool = False
    server: asyncio.Server | None = None
    connections: set[_Connection] = field(default_factory=set)
    #: Set when, draining, the last connection has closed.
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    port: int = 0

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """The caller identity to record ('' without mutual TLS), or None when its calls are to be refused."""
        if not self.mutual:
            return ""
        peer = _peer_names(transport)
        if peer is None:  # the handshake requires a certificate: this does not happen
            log.warning("proxy port: connection without a verified client certificate refused")
            return None
        identity = self.allowlist.admit(peer)
        if identity is None:
            log.warning(
                "client certificate not in tls.allowed_clients",
                extra={"client_dns": list(peer.dns), "client_uris": list(peer.uris), "client_cn": peer.common_name},
            )
        return identity

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection, let calls in flight finish within ``grace``, then close."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), grace)
        for connection in list(self.connections):
            connection.abort()
        if self.server is not None:
            await self.server.wait_closed()


async def start_proxy_port(
    servicer: AuthServicer,
    host: str,
    port: int,
    *,
    max_message: int,
    ssl_context: ssl.SSLContext | None = None,
    allowlist: ClientAllowlist | None = None,
    reuse_port: bool = False,
) -> ProxyPort:
    """Listen on ``host:port`` (0: any free port); ``ssl_context``: TLS (client certificates if it requires them)."""
    proxy = ProxyPort(
        servicer,
        max_message,
        allowlist if allowlist is not None else ClientAllowlist(()),
        mutual=ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED,
    )
    factory: Callable[[], asyncio.Protocol] = lambda: _Connection(proxy)  # noqa: E731 - asyncio's factory
    server = await asyncio.get_running_loop().create_server(
        factory, host, port, ssl=ssl_context, reuse_port=reuse_port or None, backlog=1024
    )
    proxy.server = server
    proxy.port = int(server.sockets[0].getsockname()[1])
    log.debug("proxy port open", extra={"pid": os.getpid(), "port": proxy.port})
    return proxy
