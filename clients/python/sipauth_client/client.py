"""Typed sync and asyncio clients for sipauth.v1.AuthService.

Every call has a deadline. UNAVAILABLE, and only UNAVAILABLE, is retried with
exponential backoff: it means the call did not reach a server that could
answer, and both RPCs are safe to repeat (a repeated VerifyResponse at worst
comes back STALE). Every other status is raised at once.

Each client owns one channel per process. The channel is created on the first
call and rebuilt when ``os.getpid()`` changes, so a client created before
``fork()`` (Kamailio loads its script, then forks its workers) works in every
child without sharing the parent's sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from .exchange import ExchangeConnection
from .pool import ChallengePool
from .proxy import (
    ProxyDecision,
    ProxyRequest,
    challenge_decision,
    challenge_type,
    decision_for,
    failure_decision,
    pass_through,
    pooled_challenge_decision,
    select_credentials,
    verify_request_for,
)
from .v1 import auth_pb2, auth_pb2_grpc

__all__ = ["AsyncSipauthClient", "ClientOptions", "SipauthClient", "TlsConfig", "algorithm_values"]

_ALGORITHMS: dict[str, auth_pb2.Algorithm] = {
    "MD5": auth_pb2.ALGORITHM_MD5,
    "MD5-SESS": auth_pb2.ALGORITHM_MD5_SESS,
    "SHA-256": auth_pb2.ALGORITHM_SHA_256,
    "SHA-256-SESS": auth_pb2.ALGORITHM_SHA_256_SESS,
    "SHA-512-256": auth_pb2.ALGORITHM_SHA_512_256,
    "SHA-512-256-SESS": auth_pb2.ALGORITHM_SHA_512_256_SESS,
}

C = TypeVar("C", grpc.Channel, grpc.aio.Channel)


@dataclass(frozen=True)
class TlsConfig:
    """Server CA, and for mutual TLS the proxy's own certificate and key (PEM files).

    With no ``ca_file`` the system's trust store is used. ``server_name``
    overrides the name checked in the server certificate (when dialling an IP).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """GRPC channel credentials from the files."""

        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class ClientOptions:
    """Deadline, retry schedule and transport security shared by both clients."""

    #: Deadline of each attempt, in seconds.
    timeout: float = 1.0
    #: Extra attempts after an UNAVAILABLE answer (0: a single attempt).
    retries: int = 2
    #: Wait before the first retry, in seconds; doubled for each following one.
    backoff: float = 0.05
    #: Upper bound of one wait, in seconds.
    max_backoff: float = 1.0
    tls: TlsConfig | None = None
    #: Extra gRPC channel arguments, e.g. ``("grpc.lb_policy_name", "round_robin")``.
    channel_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    #: ``SipauthClient.authorize``: answer requests without credentials from a pool of challenges
    #: fetched this many at a time (IssueChallenge ``count``), when the server says they may be
    #: pooled; 0: one VerifyResponse call per such request. The asyncio client does not pool yet.
    challenge_batch: int = 0
    #: ``SipauthClient`` only. ``unary``: one gRPC call per request (grpcio). ``exchange``: calls as
    #: messages on one Exchange stream per process, over a lean HTTP/2 connection of the client's own
    #: (for proxy workers that make one call at a time: far less CPU per call; calls from several
    #: threads take turns). A server without Exchange is then called unary.
    transport: str = "unary"

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        if not 0 <= self.challenge_batch <= 64:
            raise ValueError("challenge_batch must be between 0 and 64")
        if self.transport not in ("unary", "exchange"):
            raise ValueError("transport must be 'unary' or 'exchange'")

    def delays(self) -> Iterator[float]:
        """The waits between attempts: ``retries`` of them, growing exponentially."""
        for attempt in range(self.retries):
            yield min(self.backoff * (2**attempt), self.max_backoff)

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Channel arguments: keepalive, no built-in retries (ours are explicit), the TLS name override."""
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),
            # gRPC's default reconnect backoff grows to 120 s; a proxy wants sipauth back within seconds.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        options.extend(self.channel_options)
        return options


def algorithm_values(names: Sequence[str]) -> list[auth_pb2.Algorithm]:
    """Proto enum values for algorithm tokens such as ``SHA-256`` or ``MD5-sess``."""
    try:
        return [_ALGORITHMS[name.upper()] for name in names]
    except KeyError as exc:
        raise ValueError(f"unknown algorithm {exc.args[0]!r}") from None


def _challenge_request(
    *,
    method: str,
    realm: str,
    proxy: bool,
    request_uri: str,
    source_ip: str,
    call_id: str,
    algorithms: Sequence[str],
    count: int = 1,
) -> auth_pb2.IssueChallengeRequest:
    return auth_pb2.IssueChallengeRequest(
        method=method,
        realm=realm,
        type=challenge_type(proxy),
        request_uri=request_uri,
        source_ip=source_ip,
        call_id=call_id,
        algorithms=algorithm_values(algorithms),
        count=count,
    )


def _retryable(exc: grpc.RpcError) -> bool:
    return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)


_CHANNELS: weakref.WeakSet[_PerProcessChannel[Any] | _PerProcessExchange] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a lock at fork(): the child starts with fresh ones.
    for holder in list(_CHANNELS):
        holder.reset_lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _PerProcessChannel(Generic[C]):
    """One channel and stub per process: rebuilt, never reused, after fork()."""

    def __init__(self, target: str, options: ClientOptions, make: Callable[..., C]) -> None:
        self.target = target
        self.options = options
        self._make = make
        self._pid = -1
        self._channel: C | None = None
        self._stub: auth_pb2_grpc.AuthServiceStub | None = None
        self._lock = threading.Lock()
        _CHANNELS.add(self)

    def reset_lock(self) -> None:
        """Replace the lock (in a freshly forked child)."""
        self._lock = threading.Lock()

    def _open(self) -> C:
        tls = self.options.tls
        if tls is None:
            return self._make(self.target, options=self.options.grpc_options())
        return self._make(self.target, tls.credentials(), options=self.options.grpc_options())

    def stub(self) -> auth_pb2_grpc.AuthServiceStub:
        """The stub of the calling process, opening its channel on first use."""
        pid = os.getpid()
        stub = self._stub
        if stub is not None and pid == self._pid:
            return stub
        with self._lock:
            if self._stub is None or pid != self._pid:
                # A channel inherited across fork() belongs to the parent: drop it without closing.
                self._channel = self._open()
                self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
                self._pid = pid
            return self._stub

    def take(self) -> C | None:
        """Forget this process's channel and return it for closing (None if none or inherited)."""
        channel, owned = self._channel, self._pid == os.getpid()
        self._channel, self._stub, self._pid = None, None, -1
        return channel if owned else None


_EXCHANGE_FIELDS = {"IssueChallenge": "issue_challenge", "VerifyResponse": "verify_response"}


class _PerProcessExchange:
    """One Exchange connection per process, one call on it at a time."""

    def __init__(self, target: str, options: ClientOptions) -> None:
        self.target = target
        self.options = options
        self._pid = -1
        self._connection: ExchangeConnection | None = None
        self._lock = threading.Lock()
        _CHANNELS.add(self)

    def reset_lock(self) -> None:
        """Replace the lock (in a freshly forked child)."""
        self._lock = threading.Lock()

    def call(self, name: str, request: Any, timeout: float) -> Any:
        """``name`` (an ExchangeRequest field) with ``request``; raises ExchangeCallError."""
        with self._lock:
            pid = os.getpid()
            connection = self._connection
            if connection is None or pid != self._pid:
                # A connection inherited across fork() belongs to the parent: dropped without closing.
                connection = self._connection = ExchangeConnection(self.target, self.options)
                self._pid = pid
            return connection.call(name, request, timeout)

    def close(self) -> None:
        """Close this process's connection."""
        with self._lock:
            connection, owned = self._connection, self._pid == os.getpid()
            self._connection, self._pid = None, -1
            if connection is not None and owned:
                connection.close()


class SipauthClient:
    """Blocking client. Thread-safe; create one per process (or before fork: it survives it)."""

    def __init__(self, target: str, options: ClientOptions | None = None, **overrides: Any) -> None:
        """Dial ``target`` (host:port) lazily; keyword overrides replace fields of ``options``."""
        self.options = _merge(options, overrides)
        insecure: Callable[..., grpc.Channel] = grpc.insecure_channel
        self._channel = _PerProcessChannel(
            target, self.options, insecure if self.options.tls is None else grpc.secure_channel
        )
        self._pool = ChallengePool(self.options.challenge_batch)
        self._exchange = _PerProcessExchange(target, self.options) if self.options.transport == "exchange" else None

    @property
    def target(self) -> str:
        """The host:port this client dials."""
        return self._channel.target

    def _call(self, name: str, request: Any) -> Any:
        delays: Iterator[float] | None = None  # made on the first failure: most calls have none
        while True:
            exchange = self._exchange
            try:
                if exchange is not None:
                    return exchange.call(_EXCHANGE_FIELDS[name], request, self.options.timeout)
                return getattr(self._channel.stub(), name)(request, timeout=self.options.timeout)
            except grpc.RpcError as exc:
                if exchange is not None and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # A server that predates Exchange: the unary RPCs answer the same questions.
                    exchange.close()
                    self._exchange = None
                    continue
                if delays is None:
                    delays = self.options.delays()
                delay = next(delays, None) if _retryable(exc) else None
                if delay is None:
                    raise
                time.sleep(delay)

    def issue_challenge(
        self,
        *,
        method: str,
        realm: str = "",
        proxy: bool = False,
        request_uri: str = "",
        source_ip: str = "",
        call_id: str = "",
        algorithms: Sequence[str] = (),
        count: int = 1,
    ) -> auth_pb2.IssueChallengeResponse:
        """Ask for a 401 (or 407 with ``proxy=True``) challenge (``count`` > 1: a batch, if poolable)."""
        request = _challenge_request(
            method=method,
            realm=realm,
            proxy=proxy,
            request_uri=request_uri,
            source_ip=source_ip,
            call_id=call_id,
            algorithms=algorithms,
            count=count,
        )
        response: auth_pb2.IssueChallengeResponse = self._call("IssueChallenge", request)
        return response

    def verify_response(
        self,
        *,
        authorization: str,
        method: str,
        request_uri: str,
        body: bytes = b"",
        realm: str = "",
        proxy: bool = False,
        source_ip: str = "",
        call_id: str = "",
    ) -> auth_pb2.VerifyResponseResponse:
        """Ask for a verdict on an Authorization / Proxy-Authorization value ('' = none: a challenge)."""
        proxy_request = ProxyRequest(
            method=method,
            request_uri=request_uri,
            authorization=authorization,
            body=body,
            source_ip=source_ip,
            call_id=call_id,
            realm=realm,
            proxy=proxy,
        )
        request = verify_request_for(proxy_request, authorization)
        response: auth_pb2.VerifyResponseResponse = self._call("VerifyResponse", request)
        return response

    def authorize(self, request: ProxyRequest, *, retry_after: int = 5) -> ProxyDecision:
        """What a proxy does with ``request``: forward it, or reply with a status and headers.

        One VerifyResponse call; never raises for a gRPC failure (it becomes
        503 + Retry-After, or 500 / 400). ACK and CANCEL pass without a call.
        With ``challenge_batch``, a request without credentials is answered
        from the pool of challenges (one IssueChallenge per batch) while the
        server allows pooling.
        """
        if (decision := pass_through(request)) is not None:
            return decision
        credentials = select_credentials(request.authorization, request.realm)
        if not credentials and self._pool.enabled:
            try:
                pooled = self._pool.take(request.realm, request.proxy, lambda: self._fetch_batch(request))
            except grpc.RpcError as exc:
                return failure_decision(exc.code(), retry_after=retry_after)
            if pooled is not None:
                return challenge_decision(request, *pooled)
        try:
            response: auth_pb2.VerifyResponseResponse = self._call(
                "VerifyResponse", verify_request_for(request, credentials)
            )
        except grpc.RpcError as exc:
            return failure_decision(exc.code(), retry_after=retry_after)
        return decision_for(request, response, credentials)

    def pooled_challenge(self, *, realm: str = "", proxy: bool = False) -> ProxyDecision | None:
        """The 401 (407 with ``proxy``) for a request without credentials, from challenges already pooled.

        No call is made: None when the pool holds none for (realm, proxy) (empty,
        off, or the realm does not allow pooling), and then :meth:`authorize`
        decides. A proxy can try this first and skip gathering the request's
        fields for the most common request of all.
        """
        if not self._pool.enabled:
            return None
        pooled = self._pool.ready(realm, proxy)
        return None if pooled is None else pooled_challenge_decision(proxy, *pooled)

    def _fetch_batch(self, request: ProxyRequest) -> auth_pb2.IssueChallengeResponse:
        return self.issue_challenge(
            method=request.method,
            realm=request.realm,
            proxy=request.proxy,
            request_uri=request.request_uri,
            source_ip=request.source_ip,
            call_id=request.call_id,
            count=self.options.challenge_batch,
        )

    def close(self) -> None:
        """Close this process's channel (and Exchange connection); the next call opens a new one."""
        channel = self._channel.take()
        if channel is not None:
            channel.close()
        if self._exchange is not None:
            self._exchange.close()

    def __enter__(self) -> SipauthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSipauthClient:
    """asyncio client. Use it from one event loop; the channel opens on the first call."""

    def __init__(self, target: str, options: ClientOptions | None = None, **overrides: Any) -> None:
        """Dial ``target`` (host:port) lazily; keyword overrides replace fields of ``options``."""
        self.options = _merge(options, overrides)
        insecure: Callable[..., grpc.aio.Channel] = grpc.aio.insecure_channel
        self._channel = _PerProcessChannel(
            target, self.options, insecure if self.options.tls is None else grpc.aio.secure_channel
        )

    @property
    def target(self) -> str:
        """The host:port this client dials."""
        return self._channel.target

    async def _call(self, name: str, request: Any) -> Any:
        delays = self.options.delays()
        while True:
            try:
                return await getattr(self._channel.stub(), name)(request, timeout=self.options.timeout)
            except grpc.RpcError as exc:
                delay = next(delays, None) if _retryable(exc) else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def issue_challenge(
        self,
        *,
        method: str,
        realm: str = "",
        proxy: bool = False,
        request_uri: str = "",
        source_ip: str = "",
        call_id: str = "",
        algorithms: Sequence[str] = (),
        count: int = 1,
    ) -> auth_pb2.IssueChallengeResponse:
        """Ask for a 401 (or 407 with ``proxy=True``) challenge (``count`` > 1: a batch, if poolable)."""
        request = _challenge_request(
            method=method,
            realm=realm,
            proxy=proxy,
            request_uri=request_uri,
            source_ip=source_ip,
            call_id=call_id,
            algorithms=algorithms,
            count=count,
        )
        response: auth_pb2.IssueChallengeResponse = await self._call("IssueChallenge", request)
        return response

    async def verify_response(
        self,
        *,
        authorization: str,
        method: str,
        request_uri: str,
        body: bytes = b"",
        realm: str = "",
        proxy: bool = False,
        source_ip: str = "",
        call_id: str = "",
    ) -> auth_pb2.VerifyResponseResponse:
        """Ask for a verdict on an Authorization / Proxy-Authorization value ('' = none: a challenge)."""
        proxy_request = ProxyRequest(
            method=method,
            request_uri=request_uri,
            authorization=authorization,
            body=body,
            source_ip=source_ip,
            call_id=call_id,
            realm=realm,
            proxy=proxy,
        )
        request = verify_request_for(proxy_request, authorization)
        response: auth_pb2.VerifyResponseResponse = await self._call("VerifyResponse", request)
        return response

    async def authorize(self, request: ProxyRequest, *, retry_after: int = 5) -> ProxyDecision:
        """What a proxy does with ``request``; see :meth:`SipauthClient.authorize`."""
        if (decision := pass_through(request)) is not None:
            return decision
        credentials = select_credentials(request.authorization, request.realm)
        try:
            response: auth_pb2.VerifyResponseResponse = await self._call(
                "VerifyResponse", verify_request_for(request, credentials)
            )
        except grpc.RpcError as exc:
            return failure_decision(exc.code(), retry_after=retry_after)
        return decision_for(request, response, credentials)

    async def close(self) -> None:
        """Close this process's channel; the next call opens a new one."""
        channel = self._channel.take()
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> AsyncSipauthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _merge(options: ClientOptions | None, overrides: dict[str, Any]) -> ClientOptions:
    """``options`` (or the defaults) with ``overrides`` applied; unknown names raise TypeError."""
    return dataclasses.replace(options or ClientOptions(), **overrides)
