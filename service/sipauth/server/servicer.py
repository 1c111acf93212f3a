"""The thin gRPC layer: proto in, one call into the Authenticator, proto out.

Faults are mapped here, once: InvalidRequest -> INVALID_ARGUMENT,
BackendUnavailable -> UNAVAILABLE, anything else -> INTERNAL without
details. Requests that cannot even be decoded (for example a string field
holding bytes that are not UTF-8) are INVALID_ARGUMENT too, not gRPC's
default INTERNAL: see ``_decoder``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from sipauth_client.v1 import auth_pb2

from ..authenticator import (
    Authenticator,
    Challenge,
    ChallengeKind,
    ChallengeRequest,
    Decision,
    Verdict,
    VerifyRequest,
)
from ..credentials import Identity
from ..digest import Algorithm
from ..errors import BackendUnavailable, InvalidRequest
from ..metrics import INFLIGHT, REQUEST_LATENCY, REQUESTS
from . import audit
from .caller import current_request_id

__all__ = ["EXCHANGE_IN_FLIGHT", "SERVICE_NAME", "AuthServicer", "generic_handler", "request_id_from"]

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
log = logging.getLogger("sipauth.server")

_KINDS = {
    auth_pb2.CHALLENGE_TYPE_UNSPECIFIED: ChallengeKind.WWW,
    auth_pb2.CHALLENGE_TYPE_WWW: ChallengeKind.WWW,
    auth_pb2.CHALLENGE_TYPE_PROXY: ChallengeKind.PROXY,
}
_ALGORITHMS = {
    auth_pb2.ALGORITHM_MD5: Algorithm.MD5,
    auth_pb2.ALGORITHM_MD5_SESS: Algorithm.MD5_SESS,
    auth_pb2.ALGORITHM_SHA_256: Algorithm.SHA_256,
    auth_pb2.ALGORITHM_SHA_256_SESS: Algorithm.SHA_256_SESS,
    auth_pb2.ALGORITHM_SHA_512_256: Algorithm.SHA_512_256,
    auth_pb2.ALGORITHM_SHA_512_256_SESS: Algorithm.SHA_512_256_SESS,
}
_VERDICTS = {
    Verdict.ACCEPT: auth_pb2.VERDICT_ACCEPT,
    Verdict.REJECT: auth_pb2.VERDICT_REJECT,
    Verdict.STALE: auth_pb2.VERDICT_STALE,
    Verdict.INVALID: auth_pb2.VERDICT_INVALID,
    Verdict.LOCKED: auth_pb2.VERDICT_LOCKED,
    Verdict.FORBIDDEN: auth_pb2.VERDICT_FORBIDDEN,
}

M = TypeVar("M", bound=Message)


class _Undecodable:
    """Stands in for a request whose bytes did not decode."""


def _decoder(message_type: type[M]) -> Callable[[bytes], M | _Undecodable]:
    def decode(data: bytes) -> M | _Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return _Undecodable()

    return decode


def _kind(value: Any) -> ChallengeKind:
    kind: ChallengeKind | None = _KINDS.get(value)
    if kind is None:
        raise InvalidRequest(f"unknown challenge type {value}")
    return kind


def _algorithms(values: Any) -> tuple[Algorithm, ...]:
    out = []
    for value in values:
        algorithm = _ALGORITHMS.get(value)
        if algorithm is None:
            raise InvalidRequest(f"unknown algorithm {value}")
        out.append(algorithm)
    return tuple(out)


def challenge_to_proto(challenge: Challenge) -> auth_pb2.IssueChallengeResponse:
    """Domain challenge -> proto."""
    response = auth_pb2.IssueChallengeResponse(
        status_code=challenge.status_code,
        header_name=challenge.header_name,
        header_values=challenge.header_values,
        nonce_ttl_seconds=challenge.nonce_ttl_seconds,
        poolable=challenge.poolable,
    )
    for values in challenge.additional:
        response.additional_challenges.add(header_values=values)
    return response


def _identity_to_proto(identity: Identity) -> auth_pb2.Identity:
    """The proto of a (cached, immutable) identity, built once per identity object."""
    cached = _IDENTITIES.get(id(identity))
    if cached is not None and cached[0] is identity:
        return cached[1]
    if len(_IDENTITIES) >= _IDENTITIES_MAX:
        _IDENTITIES.clear()
    message = auth_pb2.Identity(
        display_name=identity.display_name,
        sip_uri=identity.sip_uri,
        groups=identity.groups,
        attributes=dict(identity.attributes),
    )
    # The identity is kept beside its proto, so its id cannot be reused by another object meanwhile.
    _IDENTITIES[id(identity)] = (identity, message)
    return message


# Identity protos by id() of their (immutable) Identity; emptied when full.
_IDENTITIES: dict[int, tuple[Identity, auth_pb2.Identity]] = {}
_IDENTITIES_MAX = 4096


def decision_to_proto(decision: Decision) -> auth_pb2.VerifyResponseResponse:
    """Domain decision -> proto."""
    response = auth_pb2.VerifyResponseResponse(
        verdict=_VERDICTS[decision.verdict],
        username=decision.username,
        status_code=decision.status_code,
        authentication_info=decision.authentication_info,
        reason=decision.reason,
    )
    if decision.challenge is not None:
        response.challenge.CopyFrom(challenge_to_proto(decision.challenge))
    if decision.identity is not None:
        response.identity.CopyFrom(_identity_to_proto(decision.identity))
    return response


Labels = tuple[str, str, str, str]
Call = Callable[[], Awaitable[tuple[M, Labels]]]

#: Exchange: calls of one stream being answered at once; reading the stream waits beyond this.
EXCHANGE_IN_FLIGHT = 32


class AuthServicer:
    """sipauth.v1.AuthService on top of an Authenticator."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._draining = asyncio.Event()
        self._reading: set[asyncio.Task[Any]] = set()

    def drain(self) -> None:
        """Shutting down: Exchange streams take no new message, answer those they have, and end."""
        self._draining.set()
        for reading in self._reading:
            reading.cancel()

    def _challenge_call(self, request: auth_pb2.IssueChallengeRequest) -> Call[auth_pb2.IssueChallengeResponse]:
        async def call() -> tuple[auth_pb2.IssueChallengeResponse, Labels]:
            kind = _kind(request.type)
            challenge = self._authenticator.issue_challenge(
                ChallengeRequest(
                    method=request.method,
                    realm=request.realm,
                    kind=kind,
                    request_uri=request.request_uri,
                    source_ip=request.source_ip,
                    call_id=request.call_id,
                    algorithms=_algorithms(request.algorithms),
                    count=request.count or 1,
                )
            )
            realm = request.realm or self._authenticator.default_realm
            return challenge_to_proto(challenge), ("challenge", "", realm, "")

        return call

    def _verify_call(
        self, request: auth_pb2.VerifyResponseRequest
    ) -> tuple[Call[auth_pb2.VerifyResponseResponse], Callable[[grpc.StatusCode], None]]:
        started = time.perf_counter()
        domain: VerifyRequest | None = None

        async def call() -> tuple[auth_pb2.VerifyResponseResponse, Labels]:
            nonlocal domain
            domain = VerifyRequest(
                method=request.method,
                request_uri=request.request_uri,
                authorization=request.authorization,
                body=request.body,
                realm=request.realm,
                kind=_kind(request.type),
                source_ip=request.source_ip,
                call_id=request.call_id,
            )
            decision = await self._authenticator.verify(domain)
            audit.record_decision(domain, decision, time.perf_counter() - started)
            algorithm = decision.algorithm.token if decision.algorithm else ""
            return decision_to_proto(decision), (decision.verdict.value, decision.reason, decision.realm, algorithm)

        def on_fault(status: grpc.StatusCode) -> None:
            if domain is not None:
                audit.record_fault(domain, status.name, time.perf_counter() - started)

        return call, on_fault

    async def issue_challenge(
        self, request: auth_pb2.IssueChallengeRequest | _Undecodable, context: grpc.aio.ServicerContext
    ) -> auth_pb2.IssueChallengeResponse:
        """IssueChallenge."""
        if isinstance(request, _Undecodable):
            return await _unary("IssueChallenge", context, _undecodable)
        return await _unary("IssueChallenge", context, self._challenge_call(request))

    async def verify_response(
        self, request: auth_pb2.VerifyResponseRequest | _Undecodable, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyResponseResponse:
        """VerifyResponse."""
        if isinstance(request, _Undecodable):
            return await _unary("VerifyResponse", context, _undecodable)
        return await _unary("VerifyResponse", context, *self._verify_call(request))

    async def exchange(
        self, requests: AsyncIterator[auth_pb2.ExchangeRequest | _Undecodable], context: grpc.aio.ServicerContext
    ) -> None:
        """Exchange: each message is answered as its unary RPC would be, with the same metrics and audit lines.

        Calls are answered concurrently (up to EXCHANGE_IN_FLIGHT per stream) and
        their answers written one at a time, in the order they are ready. A
        message that does not decode ends the stream with INVALID_ARGUMENT: the
        framing itself can no longer be trusted. When the server drains, the
        stream answers what it has and is cancelled, so that shutting down does
        not wait out the grace period for streams that would never end by themselves.
        """
        stream_id = _request_id(context)
        writing = asyncio.Lock()
        slots = asyncio.Semaphore(EXCHANGE_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(message: auth_pb2.ExchangeRequest, request_id: str) -> None:
            try:
                response = await self.exchange_one(message, request_id)
                async with writing:
                    await context.write(response)
            finally:
                slots.release()

        reading = asyncio.current_task()
        assert reading is not None
        self._reading.add(reading)
        try:
            number = 0
            try:
                if self._draining.is_set():
                    return
                async for message in requests:
                    if isinstance(message, _Undecodable):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT, "a message is not a valid ExchangeRequest"
                        )
                    assert isinstance(message, auth_pb2.ExchangeRequest)
                    await slots.acquire()
                    number += 1
                    task = asyncio.create_task(answer(message, f"{stream_id}.{number}"))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except asyncio.CancelledError:
                if not self._draining.is_set():
                    raise
                # drain() stopped the reading: answer what was read, then let the cancellation end the
                # stream (RST_STREAM): a client that is not reading would otherwise hold the call, and
                # the shutdown, until the grace period ends. It dials again, to another replica.
                reading.uncancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                self._reading.discard(reading)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def unary_one(self, request: Message, request_id: str) -> tuple[Message | None, grpc.StatusCode, str]:
        """One IssueChallenge or VerifyResponse outside grpc.aio: (response, OK, "") or (None, code, details)."""
        if isinstance(request, auth_pb2.VerifyResponseRequest):
            return await _observed("VerifyResponse", request_id, *self._verify_call(request))
        assert isinstance(request, auth_pb2.IssueChallengeRequest)
        return await _observed("IssueChallenge", request_id, self._challenge_call(request))

    async def exchange_one(self, message: auth_pb2.ExchangeRequest, request_id: str) -> auth_pb2.ExchangeResponse:
        """The answer to one Exchange message: its call's response, or its call's error."""
        out = auth_pb2.ExchangeResponse(id=message.id, request_id=request_id)
        which = message.WhichOneof("call")
        answer: Message | None = None
        if which == "verify_response":
            answer, code, details = await _observed(
                "VerifyResponse", request_id, *self._verify_call(message.verify_response)
            )
        elif which == "issue_challenge":
            answer, code, details = await _observed(
                "IssueChallenge", request_id, self._challenge_call(message.issue_challenge)
            )
        else:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, "the request names no call"
        if answer is not None:
            getattr(out, which).CopyFrom(answer)
        else:
            out.error.code = code.value[0]
            out.error.message = details
        return out


async def _undecodable() -> tuple[Any, Labels]:
    raise InvalidRequest("request is not a valid protobuf message")


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is sane, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return request_id_from(value)
    return request_id_from("")


def request_id_from(value: str) -> str:
    """``value`` (a caller's x-request-id) when it is sane, else a new request id."""
    if 0 < len(value) <= 128 and value.isprintable():
        return value
    return os.urandom(8).hex()


class _Outcomes(dict[tuple[str, str, str, str, str], Any]):
    """REQUESTS children by label values, made once each: ``labels()`` takes a lock on every call."""

    def __missing__(self, key: tuple[str, str, str, str, str]) -> Any:
        child = self[key] = REQUESTS.labels(*key)
        return child


_OUTCOMES = _Outcomes()
_in_flight = 0


def calls_in_flight() -> int:
    """IssueChallenge and VerifyResponse calls (unary or Exchange messages) being answered now."""
    return _in_flight


_LATENCY = {rpc: REQUEST_LATENCY.labels(rpc) for rpc in ("IssueChallenge", "VerifyResponse")}


async def _observed(
    rpc: str,
    request_id: str,
    call: Call[M],
    on_fault: Callable[[grpc.StatusCode], None] | None = None,
) -> tuple[M | None, grpc.StatusCode, str]:
    """Run ``call`` under ``request_id`` with metrics and one mapping of every failure to a status code.

    Returns (response, OK, "") or (None, code, details).
    """
    global _in_flight  # noqa: PLW0603 - one counter per process, read by the shutdown
    token = current_request_id.set(request_id)
    _in_flight += 1
    INFLIGHT.inc()
    started = time.perf_counter()
    try:
        try:
            response, (verdict, reason, realm, algorithm) = await call()
        except InvalidRequest as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except BackendUnavailable as exc:
            log.warning("backend unavailable: %s", exc)
            code, details = grpc.StatusCode.UNAVAILABLE, "a backend is unavailable"
        except Exception:
            log.exception("internal error")
            code, details = grpc.StatusCode.INTERNAL, "internal error"
        else:
            _OUTCOMES[rpc, verdict, reason, realm, algorithm].inc()
            return response, grpc.StatusCode.OK, ""
        _OUTCOMES[rpc, "fault", code.name.lower(), "", ""].inc()
        if on_fault is not None:
            on_fault(code)
        return None, code, details
    finally:
        _LATENCY[rpc].observe(time.perf_counter() - started)
        _in_flight -= 1
        INFLIGHT.dec()
        current_request_id.reset(token)


async def _unary(
    rpc: str,
    context: grpc.aio.ServicerContext,
    call: Call[M],
    on_fault: Callable[[grpc.StatusCode], None] | None = None,
) -> M:
    """A unary RPC: the request id comes from and goes back in metadata; a fault aborts the call."""
    request_id = _request_id(context)
    context.set_trailing_metadata((("x-request-id", request_id),))
    response, code, details = await _observed(rpc, request_id, call, on_fault)
    if response is not None:
        return response
    await context.abort(code, details)
    raise AssertionError("unreachable: abort raises")


def generic_handler(servicer: AuthServicer) -> grpc.GenericRpcHandler:
    """The service's method table, with decoders that turn bad bytes into INVALID_ARGUMENT."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "IssueChallenge": grpc.unary_unary_rpc_method_handler(
                servicer.issue_challenge,
                request_deserializer=_decoder(auth_pb2.IssueChallengeRequest),
                response_serializer=auth_pb2.IssueChallengeResponse.SerializeToString,
            ),
            "VerifyResponse": grpc.unary_unary_rpc_method_handler(
                servicer.verify_response,
                request_deserializer=_decoder(auth_pb2.VerifyResponseRequest),
                response_serializer=auth_pb2.VerifyResponseResponse.SerializeToString,
            ),
            "Exchange": grpc.stream_stream_rpc_method_handler(
                servicer.exchange,
                request_deserializer=_decoder(auth_pb2.ExchangeRequest),
                response_serializer=auth_pb2.ExchangeResponse.SerializeToString,
            ),
        },
    )
