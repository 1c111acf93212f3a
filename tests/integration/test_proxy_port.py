"""The proxies' port (proxy_listen): gRPC's HTTP/2 mapping from grpcio's client and from raw HTTP/2 frames.

The Exchange tests of test_exchange.py and the mutual-TLS tests of
test_mtls.py run against this port too; here: the unary RPCs, what is
refused and how, hostile bytes, shutdown with calls in flight, workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sipauth.app import RunningServer
from sipauth_client import SipauthClient, auth_pb2
from sipauth_client.exchange import EXCHANGE_PATH
from tests.support.answers import answer_for
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess

URI = "sip:example.test"
CHALLENGE_PATH = "/sipauth.v1.AuthService/IssueChallenge"
VERIFY_PATH = "/sipauth.v1.AuthService/VerifyResponse"


@pytest.fixture
async def server(server_factory: Callable[..., Any]) -> RunningServer:
    """The example server with the proxies' port on a free port."""
    running: RunningServer = await server_factory(proxy_listen="127.0.0.1:0")
    assert running.proxy is not None
    return running


def _proxy(server: RunningServer) -> tuple[str, int]:
    assert server.proxy is not None
    return "127.0.0.1", server.proxy.port


def _target(server: RunningServer) -> str:
    host, port = _proxy(server)
    return f"{host}:{port}"


def _grpc_message(payload: bytes, *, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


class RawCall:
    """One HTTP/2 connection driven by hand with h2 (a client nobody here wrote), for what grpcio never sends."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()

    def request(self, path: str, *, method: str = "POST", content_type: str = "application/grpc") -> int:
        """Open a stream with these headers; returns its id."""
        stream_id: int = self.h2.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "sipauth"),
            ("content-type", content_type),
            ("te", "trailers"),
        ]
        self.h2.send_headers(stream_id, headers)
        self.sock.sendall(self.h2.data_to_send())
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """DATA on the stream (END_STREAM with ``end``)."""
        self.h2.send_data(stream_id, data, end_stream=end)
        self.sock.sendall(self.h2.data_to_send())

    def send_flowing(self, stream_id: int, data: bytes) -> None:
        """DATA as flow control allows (reading what the server sends meanwhile), until the stream ends."""
        view = memoryview(data)
        while view and stream_id not in self.ended:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                self._read()
                continue
            self.send(stream_id, bytes(view[:window]))
            view = view[window:]

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.h2.receive_data(data):
            stream_id = getattr(event, "stream_id", None)
            if stream_id is None:
                continue
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                self.headers.setdefault(stream_id, {}).update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[stream_id] = self.bodies.get(stream_id, b"") + event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.ended.add(stream_id)
        self.sock.sendall(self.h2.data_to_send())

    def outcome(self, stream_id: int) -> tuple[dict[str, str], bytes]:
        """Headers and trailers of the stream merged, and its response bytes, once it ends."""
        while stream_id not in self.ended:
            self._read()
        return self.headers.get(stream_id, {}), self.bodies.get(stream_id, b"")

    def close(self) -> None:
        """Hang up."""
        self.sock.close()


async def _raw(server: RunningServer, scenario: Callable[[RawCall], Any]) -> Any:
    call = RawCall(_proxy(server))
    try:
        return await asyncio.to_thread(scenario, call)
    finally:
        call.close()


async def _still_serves(server: RunningServer) -> None:
    client = SipauthClient(_target(server), timeout=5, retries=0, transport="exchange")

    def login() -> int:
        challenge = client.issue_challenge(method="REGISTER", request_uri=URI)
        answer = answer_for(challenge, username="alice", password="wonderland")
        verdict: int = client.verify_response(authorization=answer, method="REGISTER", request_uri=URI).verdict
        return verdict

    try:
        assert await asyncio.to_thread(login) == auth_pb2.VERDICT_ACCEPT
    finally:
        client.close()


async def test_unary_calls_answer_as_on_the_main_port(server: RunningServer) -> None:
    """IssueChallenge and VerifyResponse from grpcio: the same answers, the caller's request id, the same errors."""
    async with grpc.aio.insecure_channel(_target(server)) as channel:
        issue = channel.unary_unary(
            CHALLENGE_PATH,
            request_serializer=auth_pb2.IssueChallengeRequest.SerializeToString,
            response_deserializer=auth_pb2.IssueChallengeResponse.FromString,
        )
        verify = channel.unary_unary(
            VERIFY_PATH,
            request_serializer=auth_pb2.VerifyResponseRequest.SerializeToString,
            response_deserializer=auth_pb2.VerifyResponseResponse.FromString,
        )
        request = auth_pb2.IssueChallengeRequest(
            method="INVITE", request_uri="sip:bob@example.test", type=auth_pb2.CHALLENGE_TYPE_PROXY
        )
        call = issue(request, timeout=5, metadata=(("x-request-id", "proxy-test-1"),))
        challenge = await call
        assert (challenge.status_code, challenge.header_name) == (407, "Proxy-Authenticate")
        assert ("x-request-id", "proxy-test-1") in tuple(await call.trailing_metadata())
        answer = answer_for(
            challenge, username="alice", password="wonderland", method="INVITE", uri=request.request_uri
        )
        accepted = await verify(
            auth_pb2.VerifyResponseRequest(
                method="INVITE",
                request_uri=request.request_uri,
                authorization=answer,
                type=auth_pb2.CHALLENGE_TYPE_PROXY,
            ),
            timeout=5,
        )
        assert accepted.verdict == auth_pb2.VERDICT_ACCEPT, accepted.reason
        assert accepted.identity.display_name == "Alice Liddell"
        missing = await verify(auth_pb2.VerifyResponseRequest(method="REGISTER", request_uri=URI), timeout=5)
        assert (missing.verdict, missing.reason) == (auth_pb2.VERDICT_REJECT, "credentials_missing")
        assert missing.challenge.status_code == 401
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await verify(auth_pb2.VerifyResponseRequest(method="NOT A METHOD", request_uri=URI), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = channel.unary_unary(VERIFY_PATH)
        with pytest.raises(grpc.aio.AioRpcError) as undecodable:
            await raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
        assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as health:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("label", "status"),
    [
        ("GET", grpc.StatusCode.UNIMPLEMENTED),
        ("not gRPC", grpc.StatusCode.INTERNAL),
        ("compressed", grpc.StatusCode.UNIMPLEMENTED),
        ("too large", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("cut short", grpc.StatusCode.INTERNAL),
        ("two messages on a unary call", grpc.StatusCode.INTERNAL),
        ("no message", grpc.StatusCode.INTERNAL),
        ("undecodable Exchange message", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_requests_grpcio_never_sends_get_a_grpc_status(
    server: RunningServer, label: str, status: grpc.StatusCode
) -> None:
    """Each malformed call ends with its gRPC status (never a hang or a dead connection); the port goes on serving."""
    challenge = _grpc_message(auth_pb2.IssueChallengeRequest(method="REGISTER").SerializeToString())

    def scenario(call: RawCall) -> dict[str, str]:
        if label == "GET":
            stream = call.request(CHALLENGE_PATH, method="GET")
            call.send(stream, b"", end=True)
        elif label == "not gRPC":
            stream = call.request(CHALLENGE_PATH, content_type="application/json")
            call.send(stream, b"{}", end=True)
        elif label == "compressed":
            stream = call.request(CHALLENGE_PATH)
            call.send(stream, _grpc_message(b"x", compressed=True), end=True)
        elif label == "too large":
            # Only the length prefix is sent: the refusal must not wait for (or buffer) the declared 1 GB.
            stream = call.request(EXCHANGE_PATH)
            call.send(stream, struct.pack(">BI", 0, 1 << 30))
        elif label == "cut short":
            stream = call.request(CHALLENGE_PATH)
            call.send(stream, challenge[:-3], end=True)
        elif label == "two messages on a unary call":
            stream = call.request(CHALLENGE_PATH)
            call.send(stream, challenge + challenge, end=True)
        elif label == "no message":
            stream = call.request(CHALLENGE_PATH)
            call.send(stream, b"", end=True)
        else:
            stream = call.request(EXCHANGE_PATH)
            call.send(stream, _grpc_message(b"\x0a\xff\xff\xff\xff\x0f"))
        headers, _ = call.outcome(stream)
        return headers

    headers = await _raw(server, scenario)
    assert headers.get("grpc-status") == str(status.value[0]), (label, headers)
    assert headers.get("grpc-message")
    await _still_serves(server)


async def test_unfinished_messages_on_one_connection_are_bounded(server: RunningServer) -> None:
    """Streams that each hold most of a large message: past MAX_BUFFERED on the connection, RESOURCE_EXHAUSTED."""
    from sipauth.server.proxy_port import MAX_BUFFERED

    declared = 1_000_000  # within the message limit, never completed
    sent = 900_000

    def scenario(call: RawCall) -> list[str]:
        streams = []
        for _ in range(MAX_BUFFERED // sent + 2):
            stream = call.request(EXCHANGE_PATH)
            call.send_flowing(stream, struct.pack(">BI", 0, declared) + b"\0" * sent)
            streams.append(stream)
        # The stream that went over (the first whose data passes MAX_BUFFERED) is answered while it still
        # sends; those before it, within the bound, still wait for the rest of their messages.
        over = MAX_BUFFERED // (sent + 5)
        headers, _ = call.outcome(streams[over])
        return [headers.get("grpc-status", ""), str(len([s for s in streams[:over] if s in call.ended]))]

    status, ended_before = await _raw(server, scenario)
    assert status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert ended_before == "0"
    await _still_serves(server)


async def test_hostile_bytes_never_take_the_port_down(server: RunningServer) -> None:
    """Not HTTP/2 at all, and random frames after a valid preface: the connection ends, the server goes on."""
    rng = random.Random(8)
    blobs = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, os.urandom(4096)]
    preface = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    preface.initiate_connection()
    start = preface.data_to_send()
    for _ in range(200):
        length = rng.randrange(0, 64)
        header = struct.pack(">I", length)[1:] + bytes([rng.randrange(0, 12), rng.randrange(0, 256)])
        blobs.append(start + header + struct.pack(">I", rng.randrange(0, 8)) + os.urandom(length))

    def throw(blob: bytes) -> None:
        with socket.create_connection(_proxy(server), timeout=5) as sock:
            sock.sendall(blob)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass

    for blob in blobs:
        await asyncio.to_thread(throw, blob)
    await _still_serves(server)


async def test_shutdown_answers_the_calls_in_flight_and_refuses_new_ones(server: RunningServer) -> None:
    """Draining: a call already being decided is answered; the connection then gets GOAWAY and closes."""
    decide = server.app.authenticator.verify
    entered = asyncio.Event()

    async def slow(request: Any) -> Any:
        entered.set()
        await asyncio.sleep(0.5)
        return await decide(request)

    server.app.authenticator.verify = slow  # type: ignore[method-assign]
    client = SipauthClient(_target(server), timeout=5, retries=0, transport="exchange")
    try:
        in_flight = asyncio.create_task(
            asyncio.to_thread(lambda: client.verify_response(authorization="", method="REGISTER", request_uri=URI))
        )
        await entered.wait()
        await server.stop(5)
        answered = await in_flight
        assert (answered.verdict, answered.reason) == (auth_pb2.VERDICT_REJECT, "credentials_missing")
        with pytest.raises(grpc.RpcError) as after:
            await asyncio.to_thread(lambda: client.issue_challenge(method="REGISTER", request_uri=URI))
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        client.close()


async def test_a_draining_exchange_stream_takes_no_new_message(server: RunningServer) -> None:
    """Once shutdown starts, an open Exchange stream answers what it has, ignores what comes after, and ends OK."""
    decide = server.app.authenticator.verify
    entered = asyncio.Event()

    async def slow(request: Any) -> Any:
        entered.set()
        await asyncio.sleep(0.5)
        return await decide(request)

    server.app.authenticator.verify = slow  # type: ignore[method-assign]
    verify = auth_pb2.VerifyResponseRequest(method="REGISTER", request_uri=URI)
    first = _grpc_message(auth_pb2.ExchangeRequest(id=1, verify_response=verify).SerializeToString())
    late = _grpc_message(auth_pb2.ExchangeRequest(id=2, verify_response=verify).SerializeToString())
    call = RawCall(_proxy(server))
    try:
        stream = call.request(EXCHANGE_PATH)
        call.send(stream, first)
        await entered.wait()
        stopping = asyncio.create_task(server.stop(5))
        await asyncio.sleep(0.1)  # the drain has begun: the stream takes no new message
        call.send(stream, late)
        headers, body = await asyncio.to_thread(call.outcome, stream)
        await stopping
    finally:
        call.close()
    assert headers.get("grpc-status") == "0"
    answers = []
    while body:
        _flag, length = struct.unpack(">BI", body[:5])
        answers.append(auth_pb2.ExchangeResponse.FromString(body[5 : 5 + length]).id)
        body = body[5 + length :]
    assert answers == [1]


def test_workers_share_the_proxy_port(
    sipauth_process: Callable[..., SipauthProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    """With --workers 2 the proxies' port is one port served by both processes (SO_REUSEPORT)."""
    audit = tmp_path / "audit.log"
    proc = sipauth_process(
        {"redis": {"url": redis_server.url}, "workers": 2, "audit_file": str(audit), "proxy_listen": "127.0.0.1:0"}
    )
    assert proc.proxy_port
    for _ in range(30):
        client = SipauthClient(proc.proxy_target, timeout=5, retries=2, transport="exchange")
        challenge = client.issue_challenge(method="REGISTER", request_uri=URI)
        answer = answer_for(challenge, username="alice", password="wonderland")
        verdict = client.verify_response(authorization=answer, method="REGISTER", request_uri=URI)
        assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict.reason
        client.close()
    pids = {json.loads(line)["pid"] for line in audit.read_text().splitlines()}
    assert len(pids) == 2
    assert proc.stop() == 0
