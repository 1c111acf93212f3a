"""The Exchange RPC: calls as messages on one stream, from grpcio's own client and from the lean blocking transport.

The blocking client runs in a thread (``asyncio.to_thread``): the server under
test shares the test's event loop. Each server test runs twice: against the
main port (grpc.aio) and against the proxies' port (``proxy_listen``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from sipauth.app import RunningServer
from sipauth_client import SipauthClient, auth_pb2
from sipauth_client.exchange import EXCHANGE_PATH, ExchangeCallError
from tests.conftest import ports_for, target_of
from tests.support.answers import answer_for
from tests.support.sipauth_process import SipauthProcess
from tests.unit.hostile import HOSTILE

URI = "sip:example.test"


@pytest.fixture
async def server(server_factory: Callable[..., Any], port_kind: str) -> RunningServer:
    """The example server, with the proxies' port when the test calls it."""
    running: RunningServer = await server_factory(**ports_for(port_kind))
    return running


def _process_target(sipauth: SipauthProcess) -> str:
    return sipauth.proxy_target if sipauth.proxy_port else sipauth.target


def _exchange_client(target: str, **overrides: Any) -> SipauthClient:
    return SipauthClient(target, **{"timeout": 5, "retries": 0, "transport": "exchange", **overrides})


def _login(client: SipauthClient, *, password: str = "wonderland") -> tuple[str, auth_pb2.VerifyResponseResponse]:
    challenge = client.issue_challenge(method="REGISTER", request_uri=URI)
    authorization = answer_for(challenge, username="alice", password=password)
    return authorization, client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)


async def test_blocking_exchange_client_logs_in_and_catches_the_replay(server: RunningServer) -> None:
    """Challenge, ACCEPT (identity, Authentication-Info), the same answer again STALE: all on one connection."""
    client = _exchange_client(target_of(server))

    def scenario() -> tuple[Any, ...]:
        authorization, accepted = _login(client)
        connection = client._exchange._connection if client._exchange else None
        replayed = client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
        wrong = _login(client, password="not-it")[1]
        same_connection = client._exchange is not None and client._exchange._connection is connection
        return accepted, replayed, wrong, same_connection

    try:
        accepted, replayed, wrong, same_connection = await asyncio.to_thread(scenario)
    finally:
        client.close()
    assert accepted.verdict == auth_pb2.VERDICT_ACCEPT, accepted.reason
    assert accepted.username == "alice"
    assert accepted.identity.display_name == "Alice Liddell"
    assert "rspauth=" in accepted.authentication_info
    assert (replayed.verdict, replayed.reason) == (auth_pb2.VERDICT_STALE, "nonce_replayed")
    assert (wrong.verdict, wrong.reason) == (auth_pb2.VERDICT_REJECT, "bad_credentials")
    assert same_connection


async def test_a_failed_call_is_its_own_and_the_stream_goes_on(server: RunningServer) -> None:
    """INVALID_ARGUMENT for one call, as the unary RPC gives it; the next call on the same stream is answered."""
    client = _exchange_client(target_of(server))

    def scenario() -> tuple[grpc.StatusCode, str, auth_pb2.VerifyResponseResponse]:
        with pytest.raises(ExchangeCallError) as info:
            client.verify_response(authorization="Digest x", method="", request_uri=URI)
        return info.value.code(), info.value.details(), _login(client)[1]

    try:
        code, details, after = await asyncio.to_thread(scenario)
    finally:
        client.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "method" in details
    assert after.verdict == auth_pb2.VERDICT_ACCEPT


async def test_grpcio_pipelined_stream_gets_every_id_answered_once(server: RunningServer) -> None:
    """grpcio's own client pipelines 60 calls on one stream: 60 answers, each id once, and a call-less request errs."""
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        exchange = channel.stream_stream(
            EXCHANGE_PATH,
            request_serializer=auth_pb2.ExchangeRequest.SerializeToString,
            response_deserializer=auth_pb2.ExchangeResponse.FromString,
        )
        challenge_request = auth_pb2.IssueChallengeRequest(method="REGISTER", request_uri=URI)
        unary = channel.unary_unary(
            "/sipauth.v1.AuthService/IssueChallenge",
            request_serializer=auth_pb2.IssueChallengeRequest.SerializeToString,
            response_deserializer=auth_pb2.IssueChallengeResponse.FromString,
        )
        answers = []
        for _ in range(20):
            challenge = await unary(challenge_request, timeout=5)
            answers.append(answer_for(challenge, username="bob", password="builder"))

        async def requests() -> AsyncIterator[auth_pb2.ExchangeRequest]:
            for index, authorization in enumerate(answers):
                verify = auth_pb2.VerifyResponseRequest(method="REGISTER", request_uri=URI, authorization=authorization)
                yield auth_pb2.ExchangeRequest(id=3 * index + 1, verify_response=verify)
                yield auth_pb2.ExchangeRequest(id=3 * index + 2, verify_response=verify)  # the replay
                yield auth_pb2.ExchangeRequest(id=3 * index + 3, issue_challenge=challenge_request)
            yield auth_pb2.ExchangeRequest(id=1000)

        responses = [response async for response in exchange(requests(), timeout=20)]
    by_id = {response.id: response for response in responses}
    assert len(responses) == len(by_id) == 61
    for index in range(20):
        first, second = by_id[3 * index + 1].verify_response, by_id[3 * index + 2].verify_response
        assert sorted([first.verdict, second.verdict]) == [auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_STALE]
        assert by_id[3 * index + 3].issue_challenge.status_code == 401
    assert by_id[1000].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(response.request_id for response in responses)
    assert len({response.request_id for response in responses}) == 61


async def test_undecodable_message_ends_the_stream_with_invalid_argument(server: RunningServer) -> None:
    """Bytes that are not an ExchangeRequest end the stream (INVALID_ARGUMENT); the server goes on serving."""
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        raw = channel.stream_stream(EXCHANGE_PATH)
        call = raw(iter([b"\x0a\xff\xff\xff\xff\x0f"]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = _exchange_client(target_of(server))
    try:
        assert (await asyncio.to_thread(_login, client))[1].verdict == auth_pb2.VERDICT_ACCEPT
    finally:
        client.close()


async def test_hostile_headers_through_exchange_get_verdicts_or_invalid_argument(server: RunningServer) -> None:
    """Every hostile Authorization value gets a non-ACCEPT verdict or INVALID_ARGUMENT, on one stream that survives."""
    client = _exchange_client(target_of(server))

    def scenario() -> list[str]:
        outcomes = []
        for _label, header in HOSTILE:
            # Lone surrogates cannot be sent in a proto string; send the UTF-8 replacement instead.
            value = header.encode("utf-8", "replace").decode("utf-8")
            try:
                verdict = client.verify_response(authorization=value, method="REGISTER", request_uri=URI)
            except ExchangeCallError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (value[:80], exc.details())
                outcomes.append("invalid_argument")
            else:
                assert verdict.verdict != auth_pb2.VERDICT_ACCEPT, value[:80]
                outcomes.append(auth_pb2.Verdict.Name(verdict.verdict))
        outcomes.append(auth_pb2.Verdict.Name(_login(client)[1].verdict))
        return outcomes

    try:
        outcomes = await asyncio.to_thread(scenario)
    finally:
        client.close()
    assert len(outcomes) == len(HOSTILE) + 1
    assert outcomes[-1] == "VERDICT_ACCEPT"


async def test_large_requests_and_answers_cross_frame_and_window_limits(
    server_factory: Callable[..., Any], port_kind: str
) -> None:
    """A 200 KB auth-int body (many DATA frames, past the 64 KB initial window) and 2 MB of answers on one stream."""
    server: RunningServer = await server_factory(
        policy={"qop": ["auth-int", "auth"]}, max_body_bytes=262_144, **ports_for(port_kind)
    )
    client = _exchange_client(target_of(server))
    body = os.urandom(100_000).hex().encode()

    def scenario() -> tuple[auth_pb2.VerifyResponseResponse, int]:
        challenge = client.issue_challenge(method="MESSAGE", request_uri=URI)
        authorization = answer_for(
            challenge, username="alice", password="wonderland", method="MESSAGE", qop="auth-int", body=body
        )
        verdict = client.verify_response(authorization=authorization, method="MESSAGE", request_uri=URI, body=body)
        received = 0
        while received < 2_200_000:
            batch = client.issue_challenge(method="REGISTER", request_uri=URI, count=64)
            received += batch.ByteSize()
        return verdict, received

    try:
        verdict, received = await asyncio.to_thread(scenario)
    finally:
        client.close()
    assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict.reason
    assert received >= 2_200_000


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says anything."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_answers_gives_deadline_exceeded_in_time(silent_listener: str) -> None:
    """No answer: DEADLINE_EXCEEDED after the timeout, not a hang."""
    client = _exchange_client(silent_listener, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ExchangeCallError) as info:
        client.issue_challenge(method="REGISTER", request_uri=URI)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0


def test_a_server_that_speaks_no_http2_is_unavailable() -> None:
    """Garbage instead of HTTP/2 frames: UNAVAILABLE (retried as such), never a crash."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65_536)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = _exchange_client(f"127.0.0.1:{listener.getsockname()[1]}", timeout=2)
        with pytest.raises(ExchangeCallError) as info:
            client.issue_challenge(method="REGISTER", request_uri=URI)
        thread.join(5)
    assert info.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}


def test_nothing_listening_is_unavailable_after_the_retries() -> None:
    """Connection refused is UNAVAILABLE, retried with backoff like a unary call."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = _exchange_client(f"127.0.0.1:{port}", retries=2, backoff=0.01)
    with pytest.raises(ExchangeCallError) as info:
        client.issue_challenge(method="REGISTER", request_uri=URI)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_restart_is_survived_by_the_next_call(server_factory: Callable[..., Any], port_kind: str) -> None:
    """A server restarted on the same port (as in a rolling restart) costs the next call nothing.

    With no retry to spend, the call finds the old connection closed before sending, dials again and succeeds.
    """
    first: RunningServer = await server_factory(**ports_for(port_kind))
    target = target_of(first)
    client = _exchange_client(target, retries=0)
    try:
        assert (await asyncio.to_thread(_login, client))[1].verdict == auth_pb2.VERDICT_ACCEPT
        await first.stop(grace=0.5)
        again = {"listen": f"127.0.0.1:{first.port}"}
        if first.proxy is not None:
            again["proxy_listen"] = target
        await server_factory(**again)
        assert (await asyncio.to_thread(_login, client))[1].verdict == auth_pb2.VERDICT_ACCEPT
    finally:
        client.close()


async def test_a_server_without_exchange_is_called_unary() -> None:
    """UNIMPLEMENTED for Exchange (an older server): the client switches to unary calls and logs in."""
    bare = grpc.aio.server()
    bare.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "sipauth.v1.AuthService",
                {
                    "IssueChallenge": grpc.unary_unary_rpc_method_handler(
                        lambda request, context: auth_pb2.IssueChallengeResponse(status_code=401),
                        request_deserializer=auth_pb2.IssueChallengeRequest.FromString,
                        response_serializer=auth_pb2.IssueChallengeResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()
    client = _exchange_client(f"127.0.0.1:{port}")
    try:
        answer = await asyncio.to_thread(lambda: client.issue_challenge(method="REGISTER", request_uri=URI))
        assert answer.status_code == 401
        assert client._exchange is None
    finally:
        client.close()
        await bare.stop(0)


def test_a_client_made_before_fork_serves_the_child_on_its_own_connection(
    sipauth_process: Callable[..., SipauthProcess], port_kind: str
) -> None:
    """As Kamailio does: the client is made, used, then the process forks; the child logs in on a new connection."""
    sipauth = sipauth_process({"default_realm": "example.test", **ports_for(port_kind)})
    client = _exchange_client(_process_target(sipauth))
    assert _login(client)[1].verdict == auth_pb2.VERDICT_ACCEPT
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and never returns into pytest
        try:
            verdict = _login(client)[1].verdict
            os.write(write, b"ok" if verdict == auth_pb2.VERDICT_ACCEPT else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok"
    assert status == 0
    assert _login(client)[1].verdict == auth_pb2.VERDICT_ACCEPT  # the parent's connection still works
    client.close()


def test_a_draining_server_ends_its_exchange_streams_without_waiting_out_the_grace(
    sipauth_process: Callable[..., SipauthProcess], port_kind: str
) -> None:
    """SIGTERM with a proxy's stream open: the stream ends at once, the process exits 0 well inside its 10 s grace."""
    sipauth = sipauth_process({"default_realm": "example.test", "shutdown_grace_seconds": 10, **ports_for(port_kind)})
    client = _exchange_client(_process_target(sipauth))
    assert _login(client)[1].verdict == auth_pb2.VERDICT_ACCEPT
    started = time.monotonic()
    assert sipauth.stop() == 0
    assert time.monotonic() - started < 5
    with pytest.raises(ExchangeCallError) as info:
        client.issue_challenge(method="REGISTER", request_uri=URI)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


async def test_a_grpc_dns_name_works_as_the_target(server: RunningServer) -> None:
    """``dns:///name:port``, the form grpcio takes (a headless Service), resolves for the Exchange transport too."""
    port = target_of(server).rsplit(":", 1)[1]
    client = _exchange_client(f"dns:///localhost:{port}")
    try:
        assert (await asyncio.to_thread(_login, client))[1].verdict == auth_pb2.VERDICT_ACCEPT
    finally:
        client.close()
