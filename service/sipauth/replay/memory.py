"""An in-process replay guard, for a single sipauth process without Redis."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from ..errors import ReplayStoreUnavailable

__all__ = ["MemoryReplayGuard"]

_ONE_TIME = -1


class MemoryReplayGuard:
    """Replay state in a dict with expiry; bounded, so a flood cannot exhaust memory.

    When full of unexpired entries it refuses (ReplayStoreUnavailable) rather
    than evicting live entries, which would re-open them to replay.
    """

    def __init__(self, max_entries: int = 500_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, tuple[int, float]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _expires_at, replay_id = heapq.heappop(self._expiry)
            entry = self._entries.get(replay_id)
            if entry is not None and entry[1] <= now:
                del self._entries[replay_id]

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use; True if fresh. Runs without awaiting, so it is atomic on the loop."""
        now = self._clock()
        self._purge(now)
        entry = self._entries.get(replay_id)
        if entry is not None:
            if _replayed(entry[0], nc):
                return False
            # A later nc of a known nonce: same expiry, already in the heap once.
            self._entries[replay_id] = (_ONE_TIME if nc is None else nc, entry[1])
            return True
        if len(self._entries) >= self._max_entries:
            raise ReplayStoreUnavailable("in-memory replay guard is full")
        expires_at = now + ttl
        self._entries[replay_id] = (_ONE_TIME if nc is None else nc, expires_at)
        heapq.heappush(self._expiry, (expires_at, replay_id))
        return True

    def seen(self, replay_id: str, nc: int | None) -> bool:
        """Whether consuming (``replay_id``, ``nc``) now would be judged a replay; records nothing."""
        self._purge(self._clock())
        entry = self._entries.get(replay_id)
        return entry is not None and _replayed(entry[0], nc)

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def close(self) -> None:
        """Nothing to release."""


def _replayed(last_nc: int, nc: int | None) -> bool:
    """Whether a use with ``nc`` (None: single use) after one recorded as ``last_nc`` is a replay."""
    return nc is None or last_nc == _ONE_TIME or nc <= last_nc
