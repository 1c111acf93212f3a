"""Mutual TLS, per RPC: the verified client certificate must be on the allowlist.

The TLS handshake already refused clients without a certificate signed by the
client CA. This interceptor runs before every method of the server (sipauth,
health, reflection) and answers PERMISSION_DENIED when the certificate's names
are not in ``tls.allowed_clients`` (UNAUTHENTICATED if, against the handshake
settings, no verified certificate is there). The matched name is put in
:data:`sipauth.server.caller.current_caller` for the rest of the RPC.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import Token
from typing import Any

import grpc

from ..client_allowlist import ClientAllowlist, PeerNames
from .caller import current_caller

__all__ = ["ClientIdentityInterceptor", "peer_names"]

log = logging.getLogger("sipauth.server")

_Behavior = Callable[..., Any]


def peer_names(auth_context: dict[str, list[bytes]]) -> PeerNames | None:
    """The names of the verified client certificate in a gRPC auth context; None without one."""
    if not auth_context.get("x509_pem_cert"):
        return None

    def texts(key: str) -> tuple[str, ...]:
        return tuple(value.decode("utf-8", "replace") for value in auth_context.get(key, ()))

    common_names = texts("x509_common_name")
    # peer_dns / peer_uri are the SANs split by type: a DNS entry must never match a URI SAN.
    return PeerNames(dns=texts("peer_dns"), uris=texts("peer_uri"), common_name=common_names[0] if common_names else "")


class ClientIdentityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse RPCs from client certificates outside the allowlist; record the caller of the others."""

    def __init__(self, allowlist: ClientAllowlist) -> None:
        self._allowlist = allowlist

    async def _admit(self, context: grpc.aio.ServicerContext) -> Token[str]:
        """Set the caller identity, or abort the RPC."""
        peer = peer_names(context.auth_context())
        if peer is None:
            log.warning("RPC without a verified client certificate refused", extra={"peer": context.peer()})
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        assert peer is not None
        identity = self._allowlist.admit(peer)
        if identity is None:
            log.warning(
                "client certificate not in tls.allowed_clients",
                extra={
                    "peer": context.peer(),
                    "client_dns": list(peer.dns),
                    "client_uris": list(peer.uris),
                    "client_cn": peer.common_name,
                },
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this client certificate is not allowed")
        assert identity is not None
        return current_caller.set(identity)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped so that the check runs first."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **codecs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream), **codecs)
        return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream), **codecs)

    def _unary(self, behavior: _Behavior) -> _Behavior:
        is_coroutine = inspect.iscoroutinefunction(behavior)

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = await self._admit(context)
            try:
                if is_coroutine:
                    return await behavior(request, context)
                # A synchronous handler runs off the event loop, as grpc.aio would run it (contextvars copied).
                return await asyncio.to_thread(behavior, request, context)
            finally:
                current_caller.reset(token)

        return checked

    def _streaming(self, behavior: _Behavior) -> _Behavior:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # No reset: an async generator may be closed from another context; each RPC has its own task anyway.
            await self._admit(context)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result
            else:
                for item in _iterable(result):
                    yield item

        return checked


def _iterable(value: object) -> Iterable[Any]:
    if value is None:
        return ()
    assert isinstance(value, Iterable)
    return value
