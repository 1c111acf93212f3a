"""The replay guard's contract: record a (nonce, nc) use at most once."""

from __future__ import annotations

import enum
from typing import Protocol

__all__ = ["ReplayGuard", "ReplayMode"]


class ReplayMode(enum.Enum):
    """How uses of one nonce are counted."""

    #: Each nc once and strictly increasing per nonce (RFC 7616 section 3.4: the UA
    #: may reuse a nonce for several requests with nc 1, 2, 3...).
    NC = "nc"
    #: Each nonce accepted once, whatever its nc.
    ONE_TIME = "one-time"


class ReplayGuard(Protocol):
    """Atomically checks and records the use of a nonce.

    ``consume`` is only called after the digest has been verified, so a flood
    of wrong answers writes nothing. ``nc`` is None for a one-time use (the
    one-time mode, or an answer without qop, which has no nc).
    Implementations raise :class:`~sipauth.errors.ReplayStoreUnavailable`
    when they cannot decide; they never guess "fresh".
    """

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use; True if it is fresh, False if it is a replay."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now (for health checks)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
