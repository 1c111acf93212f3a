"""The Exchange RPC from a blocking proxy worker: calls as messages on one long-lived HTTP/2 stream.

A proxy worker such as a Kamailio child makes one call at a time and waits
for it. grpcio's blocking unary call costs such a worker about as much CPU as
the whole SIP transaction does without it (a new call, its headers and
trailers, a completion queue, threads handing the answer over). Here one
``Exchange`` stream is opened per connection and each call is one DATA frame
out and one back, written and read on the worker's own socket: no thread,
no header block per call.

This module speaks the part of HTTP/2 (RFC 9113) such a stream needs, over
TCP or TLS (ALPN ``h2``): the connection preface and SETTINGS, HPACK header
blocks (with ``hpack``) when a stream opens and ends, flow control in both
directions, PING, RST_STREAM and GOAWAY. Anything else the server sends that
it does not understand closes the connection; the next call dials again.

Failures are :class:`ExchangeCallError`, a ``grpc.RpcError`` with the code the
unary RPC would have given: UNAVAILABLE when the call may not have reached a
server (connection refused or lost, the stream refused or reset, GOAWAY before
it), DEADLINE_EXCEEDED when no answer came in time (the connection is then
dropped: its stream's state is unknown), and a call's own ``error`` otherwise.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
import hpack

from .v1 import auth_pb2

if TYPE_CHECKING:
    from .client import ClientOptions

__all__ = ["EXCHANGE_PATH", "ExchangeCallError", "ExchangeConnection"]

EXCHANGE_PATH = "/sipauth.v1.AuthService/Exchange"

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_UINT32 = struct.Struct(">I")
# A frame header: length (24 bits) and type share the first word, then flags and stream id.
_FRAME_HEADER = struct.Struct(">IBI")
_GRPC_PREFIX = struct.Struct(">BI")
# Frame types (RFC 9113 section 6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    range(10)
)
# Flags.
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS parameters.
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 0x1, 0x2, 0x4, 0x5
_DEFAULT_WINDOW = 65_535
_OUR_WINDOW = 2**31 - 1
# Give the server back what it sent once this much has arrived (connection and stream).
_WINDOW_REFILL = 1 << 20
_MAX_MESSAGE = 4 << 20
_MAX_HEADER_BLOCK = 64 << 10
_STREAM_ID_LIMIT = 2**31 - 1
# RST_STREAM codes that mean the stream was not processed (RFC 9113 section 8.7).
_REFUSED_STREAM, _CANCEL = 0x7, 0x8

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# ExchangeRequest is encoded here around the call's own serialized request (protobuf encoding:
# a key is field number << 3 | wire type; 0 varint, 2 length-delimited), which spares building
# and copying a second message per call.
_EXCHANGE_REQUEST = auth_pb2.ExchangeRequest.DESCRIPTOR
_ID_KEY = bytes([_EXCHANGE_REQUEST.fields_by_name["id"].number << 3])
_CALL_KEYS = {field.name: bytes([field.number << 3 | 2]) for field in _EXCHANGE_REQUEST.oneofs_by_name["call"].fields}
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


class ExchangeCallError(grpc.RpcError):  # type: ignore[misc]
    """A call on the Exchange stream that got no answer; ``code()`` and ``details()`` as grpc.RpcError."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """What went wrong, in words."""
        return self._details


class _StreamEnded(Exception):
    """The current stream is over (trailers, RST_STREAM); the connection may still serve another."""

    def __init__(self, error: ExchangeCallError) -> None:
        super().__init__(str(error))
        self.error = error


def _unavailable(details: str) -> ExchangeCallError:
    return ExchangeCallError(grpc.StatusCode.UNAVAILABLE, details)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def _varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_target(target: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or a gRPC name of them (``dns:///host:port``, ``ipv4:``...) -> (host, port).

    A name with several addresses (a headless Service: one per replica) is resolved when the
    connection is made, and the first address that answers is used: each worker process holds
    its own connection, so a proxy's workers spread over the replicas as the resolver orders them.
    """
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target must be host:port, not {target!r}")
    return host.strip("[]"), int(port)


class ExchangeConnection:
    """One connection and one Exchange stream on it; one call at a time (not thread-safe).

    Dialled on the first call, and again after any failure; a stream that
    ended (server shutdown, refusal) is replaced on the same connection.
    """

    def __init__(self, target: str, options: ClientOptions) -> None:
        self.target = target
        self._options = options
        self._host, self._port = split_target(target)
        self._sock: socket.socket | ssl.SSLSocket | None = None
        self._poll: select.poll | None = None
        self._next_call_id = 1
        self._reset_connection_state()

    # -- connection ---------------------------------------------------------

    def _reset_connection_state(self) -> None:
        self._buffer = bytearray()
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._send_window = _DEFAULT_WINDOW  # connection level
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self._received = 0  # connection-level bytes not yet given back
        self._goaway = False
        self._next_stream = 1
        self._stream = 0
        self._stream_send_window = 0
        self._stream_received = 0
        self._message = bytearray()
        self._header_block: bytearray | None = None
        self._header_flags = 0
        self._header_stream = 0
        self._stream_headers_seen = False
        #: Why the current stream ended; raised once the answers that came before it are read.
        self._ended: ExchangeCallError | None = None

    def _dial(self, deadline: float) -> None:
        sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (self._host, self._port), timeout=max(0.001, deadline - time.monotonic())
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._options.tls is not None:
                sock = self._tls(sock)
        except BaseException:
            sock.close()
            raise
        self._reset_connection_state()
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        # Blocking I/O bounded by the kernel (SO_RCVTIMEO / SO_SNDTIMEO): one syscall per send or
        # receive, where a Python socket timeout adds a poll() before each.
        sock.settimeout(None)
        self._io_timeout = 0.0
        settings = struct.pack(">HI", _ENABLE_PUSH, 0) + struct.pack(">HI", _INITIAL_WINDOW_SIZE, _OUR_WINDOW)
        self._send(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, _UINT32.pack(_OUR_WINDOW - _DEFAULT_WINDOW))
        )

    def _set_io_timeout(self, seconds: float) -> None:
        assert self._sock is not None
        self._io_timeout = seconds
        seconds = max(seconds, 0.001)
        whole = int(seconds)
        timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def _tls(self, sock: socket.socket) -> ssl.SSLSocket:
        tls = self._options.tls
        assert tls is not None
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(Path(tls.cert_file)), str(Path(tls.key_file)))
        context.set_alpn_protocols(["h2"])
        wrapped = context.wrap_socket(sock, server_hostname=tls.server_name or self._host)
        if wrapped.selected_alpn_protocol() != "h2":
            wrapped.close()
            raise _unavailable("the server did not agree to HTTP/2 (ALPN h2)")
        return wrapped

    def close(self) -> None:
        """Drop the connection (the server sees its stream cancelled)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._stream = 0

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _open_stream(self) -> None:
        if self._next_stream > _STREAM_ID_LIMIT - 2 or self._goaway:
            raise _unavailable("the connection can carry no new stream")
        stream = self._next_stream
        self._next_stream += 2
        scheme = "https" if self._options.tls is not None else "http"
        block = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", scheme),
                (":path", EXCHANGE_PATH),
                (":authority", self.target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "sipauth-client-exchange"),
            ]
        )
        self._stream = stream
        self._stream_send_window = self._peer_initial_window
        self._stream_received = 0
        self._stream_headers_seen = False
        self._ended = None
        self._message = bytearray()
        self._send(_frame(_HEADERS, _END_HEADERS, stream, block))

    # -- one call -----------------------------------------------------------

    def call(self, name: str, request: Any, timeout: float) -> Any:
        """Send ``request`` as the ``name`` call (``issue_challenge`` or ``verify_response``); its answer."""
        deadline = time.monotonic() + timeout
        call_id = self._next_call_id
        self._next_call_id = call_id + 1
        inner = request.SerializeToString()
        body = b"".join((_ID_KEY, _varint(call_id), _CALL_KEYS[name], _varint(len(inner)), inner))
        try:
            self._deliver(body, deadline, timeout)
            answer = self._read_message(deadline)
            while answer.id != call_id:
                # The answer to a call given up earlier on this connection: not ours.
                answer = self._read_message(deadline)
            if self._goaway:
                self.close()  # the server is going away: the next call dials again
        except _StreamEnded as ended:
            self._stream = 0
            if self._goaway:
                self.close()
            raise ended.error from None
        except ExchangeCallError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise ExchangeCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the deadline") from None
        except (OSError, ssl.SSLError, hpack.HPACKError) as exc:
            self.close()
            raise _unavailable(f"connection to {self.target} failed: {type(exc).__name__}") from None
        result = answer.WhichOneof("result")
        if result == "error":
            code = _CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN)
            raise ExchangeCallError(code, answer.error.message)
        if result != name:
            raise ExchangeCallError(grpc.StatusCode.INTERNAL, f"the answer to {name} holds {result}")
        return getattr(answer, name)

    def _deliver(self, body: bytes, deadline: float, timeout: float) -> None:
        """Dial and open the stream when needed, then send ``body`` as one gRPC message.

        A connection found closed when sending (the server went away while
        this worker was idle, after its GOAWAY) is dialled again, once: the
        message did not leave, so sending it on a new connection is safe.
        """
        for attempt in (1, 2):
            # poll(0) first: reading what came while idle is rare, the check costs one syscall.
            if self._sock is not None and self._poll is not None and self._poll.poll(0) and not self._still_open():
                self.close()
            reused = self._sock is not None
            try:
                if self._sock is None:
                    self._dial(deadline)
                if self._io_timeout != timeout:
                    self._set_io_timeout(timeout)
                if not self._stream:
                    self._open_stream()
                self._send_message(body, deadline)
            except (BrokenPipeError, ConnectionResetError):
                if not reused or attempt == 2:
                    raise
                self.close()
            else:
                return

    def _still_open(self) -> bool:
        """Take in what the server sent while this worker was idle (the socket is readable); False if done.

        A worker reads only while it waits for an answer: a GOAWAY (the server
        shutting down) or the connection's end can be waiting here, and is
        better found before sending than after.
        """
        assert self._sock is not None
        try:
            chunk = self._sock.recv(65_536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self._buffer += chunk
        try:
            self._process(self._frames())  # may answer a PING or SETTINGS
        except OSError:
            return False
        if self._ended is not None:
            self._stream = 0  # a new stream, on this connection if it may carry one
        return not self._goaway

    def _send_message(self, body: bytes, deadline: float) -> None:
        view = memoryview(_GRPC_PREFIX.pack(0, len(body)) + body)
        while view:
            if self._ended is not None:
                raise _StreamEnded(self._ended)
            allowed = min(self._send_window, self._stream_send_window, self._peer_max_frame)
            if allowed <= 0:
                self._process(self._receive(deadline))  # wait for WINDOW_UPDATE
                continue
            chunk, view = view[:allowed], view[allowed:]
            self._send_window -= len(chunk)
            self._stream_send_window -= len(chunk)
            self._send(_frame(_DATA, 0, self._stream, bytes(chunk)))

    def _read_message(self, deadline: float) -> auth_pb2.ExchangeResponse:
        while True:
            message = self._message
            if len(message) >= 5:
                if message[0] != 0:
                    raise ExchangeCallError(grpc.StatusCode.INTERNAL, "compressed message (none was offered)")
                length = int.from_bytes(message[1:5], "big")
                if length > _MAX_MESSAGE:
                    raise ExchangeCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "answer larger than 4 MiB")
                if len(message) >= 5 + length:
                    body = bytes(message[5 : 5 + length])
                    del message[: 5 + length]
                    return auth_pb2.ExchangeResponse.FromString(body)
            if self._ended is not None:
                raise _StreamEnded(self._ended)
            self._process(self._receive(deadline))

    def _receive(self, deadline: float) -> list[tuple[int, int, int, bytearray]]:
        """The complete frames in the buffer, reading from the socket first if there is none."""
        buffer = self._buffer
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            assert self._sock is not None
            if remaining < 0.9 * self._io_timeout:
                # A later read of the same call: the kernel's bound shrinks with the deadline
                # (the first read waits the call's whole timeout, less what sending took).
                self._set_io_timeout(remaining)
            try:
                chunk = self._sock.recv(65_536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue  # SO_RCVTIMEO ran out: the loop checks the deadline
            if not chunk:
                raise _unavailable("the server closed the connection")
            buffer += chunk
        return self._frames()

    def _frames(self) -> list[tuple[int, int, int, bytearray]]:
        buffer = self._buffer
        frames = []
        start = 0
        while len(buffer) - start >= 9:
            length = int.from_bytes(buffer[start : start + 3], "big")
            end = start + 9 + length
            if end > len(buffer):
                break
            kind, flags = buffer[start + 3], buffer[start + 4]
            stream = int.from_bytes(buffer[start + 5 : start + 9], "big") & 0x7FFF_FFFF
            frames.append((kind, flags, stream, buffer[start + 9 : end]))  # the slice is the one copy
            start = end
        del buffer[:start]
        return frames

    # -- what the server sends -------------------------------------------------

    def _process(self, frames: Iterable[tuple[int, int, int, bytearray]]) -> None:
        """Act on each frame.

        The end of the current stream is recorded (``_ended``), not raised: frames
        after it in the same read still count (SETTINGS, HPACK state).
        """
        for kind, flags, stream, payload in frames:
            if self._header_block is not None and kind != _CONTINUATION:
                raise ExchangeCallError(grpc.StatusCode.INTERNAL, "header block interrupted")
            if kind == _DATA:
                self._on_data(flags, stream, payload)
            elif kind in (_HEADERS, _CONTINUATION):
                self._on_headers(kind, flags, stream, payload)
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._on_settings(payload)
            elif kind == _PING:
                if not flags & _ACK:
                    self._send(_frame(_PING, _ACK, 0, bytes(payload)))
            elif kind == _WINDOW_UPDATE:
                increment = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
                if stream == 0:
                    self._send_window += increment
                elif stream == self._stream:
                    self._stream_send_window += increment
            elif kind == _RST_STREAM:
                if stream == self._stream:
                    code = int.from_bytes(payload[:4], "big")
                    status = grpc.StatusCode.CANCELLED if code == _CANCEL else grpc.StatusCode.UNAVAILABLE
                    self._end(ExchangeCallError(status, f"the server reset the stream (error {code})"))
            elif kind == _GOAWAY:
                self._goaway = True
                last = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
                if self._stream > last:
                    raise _unavailable("the server is going away and did not take the stream")
            elif kind == _PUSH_PROMISE:
                raise ExchangeCallError(grpc.StatusCode.INTERNAL, "server push, which was refused")
            # PRIORITY and unknown frame types are ignored (RFC 9113 sections 5.5, 6.3).

    def _on_data(self, flags: int, stream: int, payload: bytearray) -> None:
        size = len(payload)
        self._received += size
        if stream == self._stream:
            self._stream_received += size
            if flags & _PADDED:
                payload = payload[1 : size - payload[0]] if size and payload[0] < size else payload[:0]
            if len(self._message) + len(payload) > _MAX_MESSAGE + 5:
                raise ExchangeCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "answer larger than 4 MiB")
            self._message += payload
        updates = b""
        if self._received >= _WINDOW_REFILL:
            updates += _frame(_WINDOW_UPDATE, 0, 0, _UINT32.pack(self._received))
            self._received = 0
        if stream == self._stream and self._stream_received >= _WINDOW_REFILL:
            updates += _frame(_WINDOW_UPDATE, 0, stream, _UINT32.pack(self._stream_received))
            self._stream_received = 0
        if updates:
            self._send(updates)
        if stream == self._stream and flags & _END_STREAM:
            self._end(ExchangeCallError(grpc.StatusCode.INTERNAL, "the stream ended without a status"))

    def _on_headers(self, kind: int, flags: int, stream: int, payload: bytearray) -> None:
        if kind == _HEADERS:
            if flags & _PADDED:
                pad = payload[0] if payload else 0
                payload = payload[1 : len(payload) - pad]
            if flags & _PRIORITY_FLAG:
                payload = payload[5:]
            self._header_block = bytearray(payload)
            self._header_flags = flags
            self._header_stream = stream
        else:
            if self._header_block is None or stream != self._header_stream:
                raise ExchangeCallError(grpc.StatusCode.INTERNAL, "CONTINUATION without HEADERS")
            self._header_block += payload
        if len(self._header_block) > _MAX_HEADER_BLOCK:
            raise ExchangeCallError(grpc.StatusCode.INTERNAL, "header block too large")
        if not flags & _END_HEADERS:
            return
        block, self._header_block = bytes(self._header_block), None
        # Every block is decoded, ours or not: HPACK's table is shared by the whole connection.
        decoded: list[tuple[str, str]] = self._decoder.decode(block, raw=False)  # type: ignore[assignment]
        headers = dict(decoded)
        if self._header_stream != self._stream:
            return
        if not self._stream_headers_seen:
            self._stream_headers_seen = True
            http_status = int(headers.get(":status", "0") or 0)
            if http_status != 200:
                code = _HTTP_TO_GRPC.get(http_status, grpc.StatusCode.UNKNOWN)
                self._end(ExchangeCallError(code, f"HTTP status {http_status}"))
                return
            if "grpc-status" not in headers:
                return
        status = headers.get("grpc-status")
        if not self._header_flags & _END_STREAM:
            return
        code = _CODES.get(int(status), grpc.StatusCode.UNKNOWN) if status and status.isdigit() else None
        details = unquote(headers.get("grpc-message", ""))
        if code is None or code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNAVAILABLE  # the server ended the stream (shutting down): dial again
            details = details or "the server ended the stream"
        self._end(ExchangeCallError(code, details))

    def _end(self, error: ExchangeCallError) -> None:
        if self._ended is None:
            self._ended = error

    def _on_settings(self, payload: bytearray) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            ident, value = struct.unpack_from(">HI", payload, offset)
            if ident == _HEADER_TABLE_SIZE:
                self._encoder.header_table_size = value
            elif ident == _INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                if self._stream:
                    self._stream_send_window += delta
            elif ident == _MAX_FRAME_SIZE:
                self._peer_max_frame = value
        self._send(_frame(_SETTINGS, _ACK, 0))
