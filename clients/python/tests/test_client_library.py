"""sipauth-client against a real sipauth: the proxy helper, retries, deadlines, TLS, fork."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from sipauth.app import RunningServer
from sipauth_client import (
    Action,
    AsyncSipauthClient,
    ProxyRequest,
    SipauthClient,
    TlsConfig,
    answer_challenge,
    parse_challenge,
    select_credentials,
)
from sipauth_client.proxy import failure_decision
from tests.conftest import USERS
from tests.support.sipauth_process import SipauthProcess

URI = "sip:bob@example.test"
PASSWORD = USERS["alice"]


def _answer(challenge_value: str, password: str = PASSWORD, method: str = "INVITE") -> str:
    return answer_challenge(
        parse_challenge(challenge_value), username="alice", password=password, method=method, uri=URI
    )


@pytest.fixture
def dead_port() -> int:
    """A loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never speaks HTTP/2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def test_request_without_credentials_gets_the_407_challenge_in_one_call(client: AsyncSipauthClient) -> None:
    """A proxy request without Proxy-Authorization is answered 407 with one Proxy-Authenticate per algorithm."""
    decision = await client.authorize(ProxyRequest(method="INVITE", request_uri=URI, proxy=True, call_id="c1"))
    assert decision.action is Action.REPLY
    assert (decision.status_code, decision.reason_phrase) == (407, "Proxy Authentication Required")
    assert [name for name, _ in decision.headers] == ["Proxy-Authenticate", "Proxy-Authenticate"]
    assert ["SHA-256" in decision.headers[0][1], "MD5" in decision.headers[1][1]] == [True, True]
    assert decision.reason == "credentials_missing"


async def test_correct_answer_forwards_with_authentication_info_and_identity(client: AsyncSipauthClient) -> None:
    """A correct answer to a 401 gives FORWARD, the credentials to strip, Authentication-Info and the identity."""
    first = await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
    assert (first.status_code, first.headers[0][0]) == (401, "WWW-Authenticate")
    credentials = _answer(first.headers[0][1], method="REGISTER")
    decision = await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization=credentials))
    assert decision.forward
    assert decision.consumed == ("Authorization", credentials)
    assert decision.response_headers[0][0] == "Authentication-Info"
    assert "rspauth=" in decision.response_headers[0][1]
    assert decision.username == "alice"
    assert decision.identity is not None
    assert decision.identity.display_name == "Alice Liddell"


async def test_proxy_flow_names_its_info_header_after_proxy_authentication(client: AsyncSipauthClient) -> None:
    """On the 407 flow the helper consumes Proxy-Authorization and returns Proxy-Authentication-Info."""
    first = await client.authorize(ProxyRequest(method="MESSAGE", request_uri=URI, proxy=True))
    credentials = _answer(first.headers[0][1], method="MESSAGE")
    decision = await client.authorize(
        ProxyRequest(method="MESSAGE", request_uri=URI, authorization=credentials, proxy=True, body=b"hi")
    )
    assert decision.forward
    assert decision.consumed == ("Proxy-Authorization", credentials)
    assert decision.response_headers[0][0] == "Proxy-Authentication-Info"


async def test_wrong_password_replay_and_garbage_get_401_stale_and_400(client: AsyncSipauthClient) -> None:
    """A wrong password gets 401 again, a replayed answer 401 with stale=true, an unparsable header 400."""
    first = await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
    wrong = await client.authorize(
        ProxyRequest(method="REGISTER", request_uri=URI, authorization=_answer(first.headers[0][1], "nope", "REGISTER"))
    )
    assert (wrong.status_code, wrong.reason) == (401, "bad_credentials")
    good = _answer(first.headers[1][1], method="REGISTER")
    assert (await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization=good))).forward
    replay = await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization=good))
    assert (replay.status_code, replay.verdict) == (401, "STALE")
    assert all("stale=true" in value for _, value in replay.headers)
    garbage = await client.authorize(ProxyRequest(method="REGISTER", request_uri=URI, authorization="Digest ,,=,"))
    assert (garbage.status_code, garbage.reason_phrase, garbage.headers) == (400, "Bad Request", ())


async def test_ack_and_cancel_pass_without_a_call(dead_port: int) -> None:
    """ACK and CANCEL are never challenged: FORWARD even when sipauth cannot be reached."""
    async with AsyncSipauthClient(f"127.0.0.1:{dead_port}", retries=0) as unreachable:
        for method in ("ACK", "CANCEL", "ack"):
            decision = await unreachable.authorize(ProxyRequest(method=method, request_uri=URI))
            assert decision.forward
            assert decision.consumed is None


def test_credentials_for_our_realm_are_picked_among_several() -> None:
    """With credentials for several realms the helper sends (and consumes) only the one for its realm."""
    other = 'Digest username="x", realm="other.test", nonce="n", uri="sip:a", response="r"'
    ours = 'Digest username="alice", realm="example.test", nonce="n", uri="sip:a", response="r"'
    assert select_credentials([other, ours], "example.test") == ours
    assert select_credentials([other], "example.test") == ""
    assert select_credentials([other, ours], "") == other
    assert select_credentials(None, "example.test") == ""


def test_failures_map_to_503_500_and_400() -> None:
    """UNAVAILABLE and DEADLINE_EXCEEDED give 503 + Retry-After, INVALID_ARGUMENT 400, anything else 500."""
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        decision = failure_decision(code, retry_after=7)
        assert (decision.status_code, decision.headers, decision.fault) == (503, (("Retry-After", "7"),), True)
    assert failure_decision(grpc.StatusCode.INTERNAL).status_code == 500
    assert failure_decision(grpc.StatusCode.INTERNAL).headers == (("Retry-After", "5"),)
    assert failure_decision(grpc.StatusCode.INVALID_ARGUMENT).status_code == 400


async def test_unavailable_is_retried_with_backoff_then_answered_503(dead_port: int) -> None:
    """UNAVAILABLE is retried `retries` times with growing waits, then becomes 503 with Retry-After."""
    async with AsyncSipauthClient(f"127.0.0.1:{dead_port}", retries=3, backoff=0.1, max_backoff=1.0) as c:
        started = time.monotonic()
        decision = await c.authorize(ProxyRequest(method="INVITE", request_uri=URI, proxy=True), retry_after=9)
        elapsed = time.monotonic() - started
    assert (decision.status_code, decision.headers) == (503, (("Retry-After", "9"),))
    assert elapsed >= 0.1 + 0.2 + 0.4


async def test_other_errors_are_not_retried(server: RunningServer) -> None:
    """INVALID_ARGUMENT is raised at once, without the retry schedule."""
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", retries=3, backoff=1.0) as c:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            await c.verify_response(authorization="", method="", request_uri=URI)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert time.monotonic() - started < 0.9


def test_every_call_has_a_deadline(silent_port: int) -> None:
    """A server that never answers costs one deadline per attempt, then a 503."""
    with SipauthClient(f"127.0.0.1:{silent_port}", timeout=0.3, retries=0) as c:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            c.issue_challenge(method="INVITE")
        assert caught.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        decision = c.authorize(ProxyRequest(method="INVITE", request_uri=URI, proxy=True))
        assert decision.status_code == 503
        assert time.monotonic() - started < 2.5


def test_sync_client_and_its_channel_survive_fork(sipauth_process: Callable[..., SipauthProcess]) -> None:
    """A client used before fork() works in the child, which opens its own channel."""
    proc = sipauth_process({})
    c = SipauthClient(proc.target, timeout=5, retries=0)
    assert c.authorize(ProxyRequest(method="REGISTER", request_uri=URI)).status_code == 401
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        status = 1
        try:
            signal.alarm(15)
            decision = c.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
            os.write(write_end, str(decision.status_code).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, code = os.waitpid(pid, 0)
    answer = os.read(read_end, 16).decode()
    os.close(read_end)
    assert (os.waitstatus_to_exitcode(code), answer) == (0, "401")
    assert c.authorize(ProxyRequest(method="REGISTER", request_uri=URI)).status_code == 401
    c.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a proxy's client certificate, as PEM files."""
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert = ca.issue_cert("127.0.0.1", "sipauth.example.test")
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    client_cert = ca.issue_cert("proxy1.example.test")
    files["client_cert"], files["client_key"] = tmp_path / "client.pem", tmp_path / "client.key"
    client_cert.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client_cert.private_key_pem.write_to_path(str(files["client_key"]))
    return files


async def test_tls_and_mutual_tls(server_factory: Callable[..., Any], pki: dict[str, Path]) -> None:
    """The client talks TLS with a CA file, and mutual TLS with its own certificate; without one it is refused."""
    tls_server = await server_factory(tls={"cert_file": pki["cert"], "key_file": pki["key"]})
    tls = TlsConfig(ca_file=pki["ca"], server_name="sipauth.example.test")
    async with AsyncSipauthClient(f"127.0.0.1:{tls_server.port}", tls=tls, retries=0) as c:
        assert (await c.authorize(ProxyRequest(method="REGISTER", request_uri=URI))).status_code == 401

    mtls_server = await server_factory(
        tls={"cert_file": pki["cert"], "key_file": pki["key"], "client_ca_file": pki["ca"]}
    )
    mutual = TlsConfig(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
    async with AsyncSipauthClient(f"127.0.0.1:{mtls_server.port}", tls=mutual, retries=0) as c:
        assert (await c.authorize(ProxyRequest(method="REGISTER", request_uri=URI))).status_code == 401
    async with AsyncSipauthClient(f"127.0.0.1:{mtls_server.port}", tls=tls, retries=0, timeout=2) as c:
        refused = await c.authorize(ProxyRequest(method="REGISTER", request_uri=URI))
        assert (refused.status_code, refused.fault) == (503, True)


def test_options_are_validated() -> None:
    """Impossible settings fail when the client is built, not on the first call."""
    with pytest.raises(ValueError, match="timeout"):
        SipauthClient("127.0.0.1:1", timeout=0)
    with pytest.raises(TypeError):
        SipauthClient("127.0.0.1:1", no_such_option=1)
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsConfig(cert_file=Path("x.pem"))
