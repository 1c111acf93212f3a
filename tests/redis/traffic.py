"""What a UA and a proxy do, reduced to what the Redis tests need: challenge, answer, verify."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from sipauth_client import AsyncSipauthClient, answer_challenge, auth_pb2, parse_challenge

__all__ = ["URI", "Outcome", "answer", "attempt", "challenge", "client", "concurrent_copies", "verify"]

URI = "sip:example.test"
USER, PASSWORD = "alice", "wonderland"


def client(target: str, timeout: float = 1.0) -> AsyncSipauthClient:
    """A client with no retries, so every outcome is seen as the server gave it."""
    return AsyncSipauthClient(target, timeout=timeout, retries=0)


async def challenge(sipauth: AsyncSipauthClient) -> str:
    """A fresh challenge value (the first offered algorithm)."""
    response = await sipauth.issue_challenge(method="REGISTER", request_uri=URI)
    return str(response.header_values[0])


def answer(challenge_value: str, nc: int = 1) -> str:
    """The Authorization value a UA sends for ``challenge_value``."""
    return answer_challenge(
        parse_challenge(challenge_value), username=USER, password=PASSWORD, method="REGISTER", uri=URI, nc=nc
    )


@dataclass(frozen=True)
class Outcome:
    """One VerifyResponse as the proxy saw it: a verdict or a gRPC status, and how long it took."""

    verdict: str
    seconds: float
    started: float
    reason: str = ""


async def verify(sipauth: AsyncSipauthClient, authorization: str) -> Outcome:
    """Ask for a verdict; an RPC failure becomes its status code name (UNAVAILABLE...)."""
    started = time.monotonic()
    try:
        response = await sipauth.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)
    except grpc.RpcError as exc:
        return Outcome(exc.code().name, time.monotonic() - started, started)
    return Outcome(
        auth_pb2.Verdict.Name(response.verdict).removeprefix("VERDICT_"),
        time.monotonic() - started,
        started,
        response.reason,
    )


async def attempt(minting: AsyncSipauthClient, verifying: AsyncSipauthClient) -> tuple[str, Outcome]:
    """One registration: challenged by ``minting``, answered, verified by ``verifying``."""
    authorization = answer(await challenge(minting))
    return authorization, await verify(verifying, authorization)


async def concurrent_copies(clients: list[AsyncSipauthClient], authorization: str, copies: int) -> list[str]:
    """Send ``copies`` of one answer at once, spread round-robin over ``clients``; the verdicts."""
    outcomes = await asyncio.gather(*(verify(clients[index % len(clients)], authorization) for index in range(copies)))
    return [outcome.verdict for outcome in outcomes]
