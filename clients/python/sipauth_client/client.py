"""Typed sync and asyncio clients for sipauth.v1.AuthService.

Every call has a deadline; UNAVAILABLE (and only UNAVAILABLE: every other
failure is an answer) is retried with exponential backoff, since both RPCs
are safe to repeat: a retried VerifyResponse at worst comes back STALE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .v1 import auth_pb2, auth_pb2_grpc

__all__ = ["AsyncSipauthClient", "SipauthClient", "TlsConfig"]

_ALGORITHMS: dict[str, auth_pb2.Algorithm] = {
    "MD5": auth_pb2.ALGORITHM_MD5,
    "MD5-SESS": auth_pb2.ALGORITHM_MD5_SESS,
    "SHA-256": auth_pb2.ALGORITHM_SHA_256,
    "SHA-256-SESS": auth_pb2.ALGORITHM_SHA_256_SESS,
    "SHA-512-256": auth_pb2.ALGORITHM_SHA_512_256,
    "SHA-512-256-SESS": auth_pb2.ALGORITHM_SHA_512_256_SESS,
}


@dataclass(frozen=True)
class TlsConfig:
    """Server CA, and for mutual TLS the proxy's own certificate and key (PEM files)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """GRPC channel credentials from the files."""

        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def algorithm_values(names: Sequence[str]) -> list[auth_pb2.Algorithm]:
    """Proto enum values for algorithm tokens such as ``SHA-256`` or ``MD5-sess``."""
    try:
        return [_ALGORITHMS[name.upper()] for name in names]
    except KeyError as exc:
        raise ValueError(f"unknown algorithm {exc.args[0]!r}") from None


def _challenge_request(
    *, method: str, realm: str, proxy: bool, request_uri: str, source_ip: str, call_id: str, algorithms: Sequence[str]
) -> auth_pb2.IssueChallengeRequest:
    return auth_pb2.IssueChallengeRequest(
        method=method,
        realm=realm,
        type=auth_pb2.CHALLENGE_TYPE_PROXY if proxy else auth_pb2.CHALLENGE_TYPE_WWW,
        request_uri=request_uri,
        source_ip=source_ip,
        call_id=call_id,
        algorithms=algorithm_values(algorithms),
    )


def _verify_request(
    *,
    authorization: str,
    method: str,
    request_uri: str,
    body: bytes,
    realm: str,
    proxy: bool,
    source_ip: str,
    call_id: str,
) -> auth_pb2.VerifyResponseRequest:
    return auth_pb2.VerifyResponseRequest(
        authorization=authorization,
        method=method,
        request_uri=request_uri,
        body=body,
        realm=realm,
        type=auth_pb2.CHALLENGE_TYPE_PROXY if proxy else auth_pb2.CHALLENGE_TYPE_WWW,
        source_ip=source_ip,
        call_id=call_id,
    )


def _channel_options() -> list[tuple[str, Any]]:
    return [("grpc.keepalive_time_ms", 30_000), ("grpc.enable_retries", 0)]


class _Retrying:
    timeout: float
    retries: int
    backoff: float

    def _delay(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt))

    @staticmethod
    def _retryable(exc: grpc.RpcError) -> bool:
        return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)


class SipauthClient(_Retrying):
    """Blocking client. One instance per process; not shared across fork()."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        backoff: float = 0.05,
        tls: TlsConfig | None = None,
    ) -> None:
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=_channel_options())
        else:
            options = _channel_options()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if attempt == self.retries or not self._retryable(exc):
                    raise
                time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

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
    ) -> auth_pb2.IssueChallengeResponse:
        """Ask for a 401 (or 407 with ``proxy=True``) challenge."""
        request = _challenge_request(
            method=method,
            realm=realm,
            proxy=proxy,
            request_uri=request_uri,
            source_ip=source_ip,
            call_id=call_id,
            algorithms=algorithms,
        )
        response: auth_pb2.IssueChallengeResponse = self._call(self._stub.IssueChallenge, request)
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
        """Ask for a verdict on an Authorization / Proxy-Authorization value."""
        request = _verify_request(
            authorization=authorization,
            method=method,
            request_uri=request_uri,
            body=body,
            realm=realm,
            proxy=proxy,
            source_ip=source_ip,
            call_id=call_id,
        )
        response: auth_pb2.VerifyResponseResponse = self._call(self._stub.VerifyResponse, request)
        return response

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> SipauthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSipauthClient(_Retrying):
    """asyncio client; create it inside the running event loop."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        backoff: float = 0.05,
        tls: TlsConfig | None = None,
    ) -> None:
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=_channel_options())
        else:
            options = _channel_options()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)

    async def _call(self, method: Any, request: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if attempt == self.retries or not self._retryable(exc):
                    raise
                await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

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
    ) -> auth_pb2.IssueChallengeResponse:
        """Ask for a 401 (or 407 with ``proxy=True``) challenge."""
        request = _challenge_request(
            method=method,
            realm=realm,
            proxy=proxy,
            request_uri=request_uri,
            source_ip=source_ip,
            call_id=call_id,
            algorithms=algorithms,
        )
        response: auth_pb2.IssueChallengeResponse = await self._call(self._stub.IssueChallenge, request)
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
        """Ask for a verdict on an Authorization / Proxy-Authorization value."""
        request = _verify_request(
            authorization=authorization,
            method=method,
            request_uri=request_uri,
            body=body,
            realm=realm,
            proxy=proxy,
            source_ip=source_ip,
            call_id=call_id,
        )
        response: auth_pb2.VerifyResponseResponse = await self._call(self._stub.VerifyResponse, request)
        return response

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncSipauthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
