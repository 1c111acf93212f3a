"""A per-process pool of fresh challenges, so a request without credentials costs no call.

Where a realm binds nonces to nothing per request (no source IP, no Call-ID
binding), any fresh challenge is as good as another: the client fetches them
in batches (IssueChallenge ``count``) and hands each out once. The server
says whether that is allowed (``poolable``); when it is not, the challenge
it returned was minted for the request at hand and is used for it alone, and
pooling for that realm and type is not tried again for ``retry_poolable``
seconds. A challenge is handed out only while younger than half its nonces'
lifetime, so the UA has the other half to answer. The pool is emptied after
fork(): each process keeps its own (nonces are never shared twice).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

from .v1 import auth_pb2

__all__ = ["ChallengePool"]

_Key = tuple[str, bool]
#: (header name, header values) of one challenge.
Pooled = tuple[str, tuple[str, ...]]


class ChallengePool:
    """Challenges by (realm, proxy), refilled ``batch`` at a time. Thread-safe."""

    def __init__(
        self, batch: int, *, retry_poolable: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.batch = batch
        self.retry_poolable = retry_poolable
        self.clock = clock
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._entries: dict[_Key, deque[tuple[float, str, tuple[str, ...]]]] = {}
        self._not_poolable_until: dict[_Key, float] = {}

    @property
    def enabled(self) -> bool:
        """Whether pooling is configured at all."""
        return self.batch > 0

    def _own(self) -> None:
        if os.getpid() != self._pid:
            # A copy inherited across fork(): the parent may hand out the same challenges.
            self._pid, self._lock = os.getpid(), threading.Lock()
            self._entries, self._not_poolable_until = {}, {}

    def take(self, realm: str, proxy: bool, fetch: Callable[[], auth_pb2.IssueChallengeResponse]) -> Pooled | None:
        """A challenge for a request without credentials; None when pooling is off for this realm and type.

        ``fetch`` asks the server for a batch (it may raise grpc.RpcError, passed on).
        """
        poolable, entry = self._held(realm, proxy)
        if not poolable or entry is not None:
            return entry
        key = (realm, proxy)
        now = self.clock()
        response = fetch()
        if not response.poolable:
            with self._lock:
                self._not_poolable_until[key] = now + self.retry_poolable
            return response.header_name, tuple(response.header_values)
        good_until = now + response.nonce_ttl_seconds / 2
        first = (response.header_name, tuple(response.header_values))
        with self._lock:
            entries = self._entries.setdefault(key, deque())
            for extra in response.additional_challenges:
                entries.append((good_until, response.header_name, tuple(extra.header_values)))
        return first

    def ready(self, realm: str, proxy: bool) -> Pooled | None:
        """A challenge the pool already holds for (realm, proxy), or None: nothing is fetched."""
        return self._held(realm, proxy)[1]

    def _held(self, realm: str, proxy: bool) -> tuple[bool, Pooled | None]:
        """Whether (realm, proxy) is pooled now, and a fresh challenge the pool holds for it (if any)."""
        self._own()
        key = (realm, proxy)
        now = self.clock()
        with self._lock:
            if self._not_poolable_until.get(key, 0.0) > now:
                return False, None
            return True, self._pop_fresh(key, now)

    def _pop_fresh(self, key: _Key, now: float) -> Pooled | None:
        entries = self._entries.get(key)
        while entries:
            good_until, name, values = entries.popleft()
            if good_until > now:
                return name, values
        return None

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())
