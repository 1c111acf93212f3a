"""The ``local_fallback`` failure policy: decide from this replica's memory while Redis is unreachable.

This trades cross-replica replay protection for availability during an
outage, so it is never quiet: entering and leaving it is logged at error /
warning level, every fallback decision is counted
(``sipauth_replay_fallback_decisions_total``) and a gauge
(``sipauth_replay_fallback_active``) is 1 while it lasts. Uses recorded in
memory during the outage stay replays after Redis returns, until they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..errors import ReplayStoreUnavailable
from ..metrics import REPLAY_FALLBACK_ACTIVE, REPLAY_FALLBACK_DECISIONS
from .base import ReplayGuard
from .memory import MemoryReplayGuard

__all__ = ["FallbackReplayGuard"]

log = logging.getLogger("sipauth.replay")

_REPORT_INTERVAL = 10.0


class FallbackReplayGuard:
    """The shared guard while it answers; this replica's memory while it does not.

    While degraded, requests never wait on the shared store: it is probed
    with PING in the background at most every ``probe_interval`` seconds
    (and by the health monitor's ``ping``), and used again as soon as it
    answers.
    """

    def __init__(
        self,
        primary: ReplayGuard,
        memory: MemoryReplayGuard,
        *,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._memory = memory
        self._probe_interval = probe_interval
        self._clock = clock
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._next_report = 0.0
        self._probe: asyncio.Task[None] | None = None
        #: Replay checks this guard decided from memory (also in the Prometheus counter).
        self.fallback_decisions = 0

    @property
    def primary(self) -> ReplayGuard:
        """The shared guard this one falls back from."""
        return self._primary

    @property
    def degraded(self) -> bool:
        """Whether replays are being decided from this replica's memory."""
        return self._down_since is not None

    def _enter_fallback(self, reason: str) -> None:
        if self._down_since is not None:
            return
        now = self._clock()
        self._down_since = now
        self._next_probe = now + self._probe_interval
        self._next_report = now + _REPORT_INTERVAL
        REPLAY_FALLBACK_ACTIVE.set(1)
        log.error(
            "replay store unreachable: deciding replays from this replica's memory (failure_policy "
            "local_fallback); replays across replicas are NOT detected until it returns",
            extra={"reason": reason},
        )

    def _leave_fallback(self) -> None:
        if self._down_since is None:
            return
        outage = self._clock() - self._down_since
        self._down_since = None
        REPLAY_FALLBACK_ACTIVE.set(0)
        log.warning(
            "replay store reachable again: shared replay checks resumed",
            extra={"outage_seconds": round(outage, 3), "fallback_decisions": self.fallback_decisions},
        )

    async def _probe_primary(self) -> None:
        if await self._primary.ping():
            self._leave_fallback()

    def _schedule_probe(self) -> None:
        now = self._clock()
        if now < self._next_probe or (self._probe is not None and not self._probe.done()):
            return
        self._next_probe = now + self._probe_interval
        self._probe = asyncio.create_task(self._probe_primary())

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use in the shared store, or in memory while that is unreachable."""
        if self._down_since is None:
            try:
                fresh = await self._primary.consume(replay_id, nc, ttl)
            except ReplayStoreUnavailable as exc:
                self._enter_fallback(str(exc))
            else:
                # A use recorded in memory during an outage is still a replay.
                return fresh and not self._memory.seen(replay_id, nc)
        else:
            self._schedule_probe()
        fresh = await self._memory.consume(replay_id, nc, ttl)
        self.fallback_decisions += 1
        REPLAY_FALLBACK_DECISIONS.inc()
        now = self._clock()
        if now >= self._next_report:
            self._next_report = now + _REPORT_INTERVAL
            log.error(
                "replay store still unreachable: deciding replays from this replica's memory",
                extra={"fallback_decisions": self.fallback_decisions},
            )
        return fresh

    async def ping(self) -> bool:
        """Always True (this replica can decide); probes the shared store and switches mode to match."""
        if await self._primary.ping():
            self._leave_fallback()
        else:
            self._enter_fallback("ping failed")
        return True

    async def close(self) -> None:
        """Stop probing and release the shared store's connections."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._primary.close()
        await self._memory.close()
