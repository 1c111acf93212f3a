"""A cache in front of any CredentialSource.

- Positive and negative entries, each with its TTL; a size bound (least recently used goes first).
- Single flight: one lookup per (user, realm) in flight; concurrent callers share its answer.
- ``refresh=True`` (the answer did not match: maybe a new password) re-reads the
  user, unless the cached copy is younger than ``refresh_min_interval``: a
  password-guessing flood then costs one directory search per user and interval,
  not one per guess.
- Serve-stale: when the source raises CredentialsUnavailable, a known user's
  entry up to ``stale_max_age`` old is still used; an unknown or uncached user
  gets the error (never a guess). After a failure the source is left alone for
  ``retry_after`` so an outage does not make every request wait for timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CredentialsUnavailable
from ..metrics import CACHE
from .base import CredentialSource, UserRecord

__all__ = ["CachedCredentialSource"]

log = logging.getLogger("sipauth.credentials.cache")
_Key = tuple[str, str]
# Labelled once: ``labels()`` costs a lock and a dict lookup on every call.
_HITS, _MISSES, _STALE = CACHE.labels("hit"), CACHE.labels("miss"), CACHE.labels("stale")
_REFRESHES, _REFRESHES_SUPPRESSED = CACHE.labels("refresh"), CACHE.labels("refresh_suppressed")


@dataclass(slots=True)
class _Entry:
    record: UserRecord | None
    fetched_at: float


class CachedCredentialSource:
    """Wraps a CredentialSource with the cache described in the module docstring."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        positive_ttl: float = 300.0,
        negative_ttl: float = 30.0,
        max_entries: int = 100_000,
        serve_stale: bool = True,
        stale_max_age: float = 3600.0,
        refresh_min_interval: float = 5.0,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.serve_stale = serve_stale
        self.stale_max_age = stale_max_age
        self.refresh_min_interval = refresh_min_interval
        self.retry_after = retry_after
        self.clock = clock
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._in_flight: dict[_Key, asyncio.Task[UserRecord | None]] = {}
        self._down_until = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, entry: _Entry, now: float) -> bool:
        ttl = self.positive_ttl if entry.record is not None else self.negative_ttl
        return now - entry.fetched_at < ttl

    def peek(self, username: str, realm: str) -> UserRecord | None:
        """The fresh cached record of a known user, with no I/O; None when a lookup would be needed."""
        entry = self._entries.get((username, realm))
        if entry is None or entry.record is None or not self._fresh(entry, self.clock()):
            return None
        self._entries.move_to_end((username, realm))
        _HITS.inc()
        return entry.record

    async def lookup(self, username: str, realm: str, *, refresh: bool = False) -> UserRecord | None:
        """The cached record, or the source's answer (see the module docstring for the rules)."""
        key = (username, realm)
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            if refresh:
                if now - entry.fetched_at < self.refresh_min_interval:
                    _REFRESHES_SUPPRESSED.inc()
                    return entry.record
                _REFRESHES.inc()
            elif self._fresh(entry, now):
                _HITS.inc()
                return entry.record
        flight = self._in_flight.get(key)
        if flight is None:
            # One lookup in flight per user: later callers wait for the same answer.
            _MISSES.inc()
            flight = asyncio.ensure_future(self._fetch(key, entry, now))
            self._in_flight[key] = flight
            flight.add_done_callback(functools.partial(self._landed, key))
        # Shielded: a caller that gives up (its deadline) must not cancel the lookup others wait on.
        return await asyncio.shield(flight)

    def _landed(self, key: _Key, flight: asyncio.Task[UserRecord | None]) -> None:
        if self._in_flight.get(key) is flight:
            del self._in_flight[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here too, in case every waiter gave up

    async def _fetch(self, key: _Key, entry: _Entry | None, now: float) -> UserRecord | None:
        if now >= self._down_until:
            try:
                record = await self.source.lookup(key[0], key[1], refresh=True)
            except CredentialsUnavailable:
                self._down_until = self.clock() + self.retry_after
            else:
                self._down_until = 0.0
                self._store(key, record)
                return record
        if (
            self.serve_stale
            and entry is not None
            and entry.record is not None
            and now - entry.fetched_at <= self.stale_max_age
        ):
            _STALE.inc()
            return entry.record
        raise CredentialsUnavailable("the credential source is unavailable and the user is not cached")

    def _store(self, key: _Key, record: UserRecord | None) -> None:
        self._entries[key] = _Entry(record, self.clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, username: str | None = None) -> None:
        """Forget one user (every realm), or everything."""
        if username is None:
            self._entries.clear()
            return
        for key in [k for k in self._entries if k[0] == username]:
            del self._entries[key]

    async def ping(self) -> bool:
        """Whether the source answers now."""
        return await self.source.ping()

    async def close(self) -> None:
        """Close the source."""
        await self.source.close()
