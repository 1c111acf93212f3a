"""Brute-force protection: failure counters with expiry, shared by every replica.

Wrong answers are counted per (realm, user, source IP) and per source IP
(password spraying), optionally per (realm, user) whatever the source — off
by default, since it lets anyone lock a victim out. A scope that reaches its
threshold within its window is locked for ``base * 2**level`` seconds (capped),
each new lock doubling the last. While any scope is locked the verdict is
LOCKED without the password being looked at, so a lock is no oracle. A
successful login resets its user's counters (not the IP's: one valid account
must not launder an IP that sprays others). Trusted networks are exempt.

Keys hold a hash of the user, never the name; the IP and user+IP scopes
share a hash tag (the IP), so a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import BackendUnavailable
from .metrics import LOCKOUTS
from .replay.redis import RedisReplayGuard, execute_scripted

__all__ = [
    "ConsumeReading",
    "FallbackLockoutStore",
    "Lockout",
    "LockoutPolicy",
    "LockoutState",
    "LockoutStore",
    "MemoryLockoutStore",
    "RedisLockoutStore",
    "Scope",
]

KEY_PREFIX = "sipauth:lock:"
#: Records a replay use and reads hashes in the same round trip: (keys, fields) -> (fresh, rows).
ConsumeReading = Callable[[Sequence[str], Sequence[str]], Awaitable[tuple[bool, list[Any]]]]
log = logging.getLogger("sipauth.lockout")


@dataclass(frozen=True, slots=True)
class Scope:
    """One counter: its store key and the thresholds that apply to it."""

    key: str
    threshold: int
    kind: str


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """Thresholds, windows and backoff, resolved from settings."""

    enabled: bool = True
    #: Wrong answers from one IP for one user within ``window`` that lock that pair.
    threshold: int = 5
    #: Wrong answers from one IP, all users together, within ``window`` that lock the IP.
    ip_threshold: int = 30
    #: Lock a user whatever the source after this many failures (0: off).
    user_threshold: int = 0
    window: float = 300.0
    base_lock: float = 30.0
    max_lock: float = 3600.0
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def exempt(self, source_ip: str) -> bool:
        """Whether requests from ``source_ip`` skip lockout entirely."""
        if not self.enabled:
            return True
        if not source_ip or not self.trusted_networks:
            return False
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)


@dataclass(frozen=True, slots=True)
class LockoutState:
    """What a check found."""

    locked_until: float
    #: Some counter of this user holds failures (a success should reset it).
    has_failures: bool

    def locked(self, now: float) -> bool:
        """Whether a lock is in force at ``now``."""
        return self.locked_until > now


class LockoutStore(Protocol):
    """Where counters live: Redis for a cluster, memory for one process."""

    async def state(self, keys: Sequence[str]) -> list[tuple[float, int]]:
        """(locked-until, failures) per key; (0, 0) for a key never seen."""
        ...

    async def fail(self, scopes: Sequence[Scope], policy: LockoutPolicy, now: float) -> list[float]:
        """Count one failure in each scope; per scope, the locked-until of a lock this failure imposed, else 0."""
        ...

    async def clear(self, keys: Sequence[str]) -> None:
        """Forget these counters."""
        ...

    async def clear_matching(self, pattern: str) -> int:
        """Forget every counter whose key matches the glob ``pattern``; returns how many."""
        ...


@functools.lru_cache(maxsize=4096)
def _user_hash(realm: str, username: str) -> str:
    # Kept: the same users answer again and again, and each check needs their keys.
    return hashlib.sha256(f"{realm}\0{username}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


def scope_keys(realm: str, username: str, source_ip: str) -> dict[str, str]:
    """The store keys of every scope for this attempt (see the module docstring)."""
    user = _user_hash(realm, username)
    keys = {"user": f"{KEY_PREFIX}{{u:{user}}}"}
    if source_ip:
        keys["user_ip"] = f"{KEY_PREFIX}{{ip:{source_ip}}}:{user}"
        keys["ip"] = f"{KEY_PREFIX}{{ip:{source_ip}}}"
    return keys


def _lock_length(policy: LockoutPolicy, level: int) -> float:
    return float(min(policy.max_lock, policy.base_lock * (2 ** min(level, 40))))


@dataclass
class _Counter:
    failures: int = 0
    window_start: float = 0.0
    level: int = 0
    locked_until: float = 0.0
    expires_at: float = 0.0


@dataclass
class MemoryLockoutStore:
    """Counters in this process only (no Redis configured)."""

    clock: Callable[[], float] = time.time
    max_entries: int = 200_000
    _counters: dict[str, _Counter] = field(default_factory=dict)

    def _get(self, key: str, now: float) -> _Counter | None:
        counter = self._counters.get(key)
        if counter is not None and counter.expires_at <= now:
            del self._counters[key]
            return None
        return counter

    async def state(self, keys: Sequence[str]) -> list[tuple[float, int]]:
        """(locked-until, failures) per key."""
        now = self.clock()
        out = []
        for key in keys:
            counter = self._get(key, now)
            out.append((counter.locked_until, counter.failures) if counter else (0.0, 0))
        return out

    async def fail(self, scopes: Sequence[Scope], policy: LockoutPolicy, now: float) -> list[float]:
        """Count a failure in each scope."""
        imposed = []
        if len(self._counters) >= self.max_entries:
            for key in [k for k, c in self._counters.items() if c.expires_at <= now]:
                del self._counters[key]
        for scope in scopes:
            counter = self._get(scope.key, now)
            if counter is None:
                if len(self._counters) >= self.max_entries:
                    # Full of live counters: count nothing new rather than grow without bound.
                    imposed.append(0.0)
                    continue
                counter = self._counters[scope.key] = _Counter(window_start=now)
            if now - counter.window_start > policy.window:
                counter.failures, counter.window_start = 0, now
            counter.failures += 1
            new_lock = 0.0
            if counter.failures >= scope.threshold:
                counter.locked_until = new_lock = now + _lock_length(policy, counter.level)
                counter.level += 1
                counter.failures, counter.window_start = 0, now
            counter.expires_at = max(now + policy.window, counter.locked_until) + policy.max_lock
            imposed.append(new_lock)
        return imposed

    async def clear(self, keys: Sequence[str]) -> None:
        """Forget these counters."""
        for key in keys:
            self._counters.pop(key, None)

    async def clear_matching(self, pattern: str) -> int:
        """Forget every counter whose key matches the glob ``pattern``."""
        matched = [key for key in self._counters if fnmatch.fnmatchcase(key, pattern)]
        for key in matched:
            del self._counters[key]
        return len(matched)


# KEYS[1] counter; ARGV: now_ms, window_ms, threshold, base_ms, max_ms.
# Returns the locked-until (ms) of a lock this call imposed, else 0.
_FAIL = """
local h = redis.call('HMGET', KEYS[1], 'f', 's', 'l', 'u')
local now = tonumber(ARGV[1]); local window = tonumber(ARGV[2]); local threshold = tonumber(ARGV[3])
local base = tonumber(ARGV[4]); local max = tonumber(ARGV[5])
local fails = tonumber(h[1]) or 0; local start = tonumber(h[2]) or now
local level = tonumber(h[3]) or 0; local untl = tonumber(h[4]) or 0
if now - start > window then fails = 0; start = now end
fails = fails + 1
local imposed = 0
if fails >= threshold then
  untl = now + math.min(max, base * math.pow(2, math.min(level, 40)))
  imposed = untl; level = level + 1; fails = 0; start = now
end
redis.call('HSET', KEYS[1], 'f', fails, 's', start, 'l', level, 'u', untl)
redis.call('PEXPIRE', KEYS[1], math.floor(math.max(now + window, untl) - now + max))
return imposed
"""


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Any Redis failure is BackendUnavailable, named by its type only (messages carry addresses)."""
    try:
        yield
    except Exception as exc:
        raise BackendUnavailable(f"lockout store failed: {type(exc).__name__}") from exc


class RedisLockoutStore:
    """Counters in Redis (standalone, Sentinel or Cluster), shared by every replica."""

    #: The hash fields a state read needs (HMGET key u f).
    STATE_FIELDS = ("u", "f")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._fail = client.register_script(_FAIL)

    @property
    def client(self) -> Any:
        """The Redis client (shared with the replay guard)."""
        return self._client

    @staticmethod
    def parse_state(row: Sequence[Any]) -> tuple[float, int]:
        """(locked-until, failures) from one ``HMGET key u f`` answer."""
        return float(row[0] or 0) / 1000, int(row[1] or 0)

    async def state(self, keys: Sequence[str]) -> list[tuple[float, int]]:
        """(locked-until, failures) per key, in one round trip."""
        with _unavailable():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, *self.STATE_FIELDS)
            rows = await pipe.execute()
        return [self.parse_state(row) for row in rows]

    async def fail(self, scopes: Sequence[Scope], policy: LockoutPolicy, now: float) -> list[float]:
        """Count a failure in each scope, in one round trip."""
        now_ms = math.floor(now * 1000)
        window, base, cap = int(policy.window * 1000), int(policy.base_lock * 1000), int(policy.max_lock * 1000)

        def fill(pipe: Any) -> None:
            for scope in scopes:
                pipe.evalsha(self._fail.sha, 1, scope.key, now_ms, window, scope.threshold, base, cap)

        with _unavailable():
            results = await execute_scripted(self._client, self._fail, fill)
        return [float(r) / 1000 for r in results]

    async def clear(self, keys: Sequence[str]) -> None:
        """Forget these counters."""
        with _unavailable():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)
            await pipe.execute()

    async def clear_matching(self, pattern: str) -> int:
        """Forget every counter whose key matches ``pattern`` (SCAN, every Cluster node)."""
        with _unavailable():
            keys = [key async for key in self._client.scan_iter(match=pattern, count=1000)]
            for key in keys:
                await self._client.delete(key)
        return len(keys)


class FallbackLockoutStore:
    """Redis counters while Redis answers, this replica's memory while it does not (``local_fallback``)."""

    def __init__(self, primary: LockoutStore, memory: MemoryLockoutStore) -> None:
        self._primary = primary
        self._memory = memory

    async def state(self, keys: Sequence[str]) -> list[tuple[float, int]]:
        """(locked-until, failures) per key, from whichever store answers."""
        try:
            shared = await self._primary.state(keys)
        except BackendUnavailable:
            log.warning("lockout counters unreachable: using this replica's memory")
            return await self._memory.state(keys)
        local = await self._memory.state(keys)
        # Failures counted in memory during an outage still count.
        return [(max(a[0], b[0]), a[1] + b[1]) for a, b in zip(shared, local, strict=True)]

    async def fail(self, scopes: Sequence[Scope], policy: LockoutPolicy, now: float) -> list[float]:
        """Count in Redis, or in memory while Redis is unreachable."""
        try:
            return await self._primary.fail(scopes, policy, now)
        except BackendUnavailable:
            log.warning("lockout counters unreachable: counting in this replica's memory")
            return await self._memory.fail(scopes, policy, now)

    async def clear(self, keys: Sequence[str]) -> None:
        """Forget these counters in both stores."""
        await self._memory.clear(keys)
        await self._primary.clear(keys)

    async def clear_matching(self, pattern: str) -> int:
        """Forget matching counters in both stores."""
        return await self._memory.clear_matching(pattern) + await self._primary.clear_matching(pattern)


@dataclass
class Lockout:
    """The lockout decision for one attempt, over a store."""

    policy: LockoutPolicy
    store: LockoutStore
    clock: Callable[[], float] = time.time

    def _scopes(self, realm: str, username: str, source_ip: str) -> list[Scope]:
        keys = scope_keys(realm, username, source_ip)
        scopes = []
        if "user_ip" in keys:
            scopes.append(Scope(keys["user_ip"], self.policy.threshold, "user_ip"))
            scopes.append(Scope(keys["ip"], self.policy.ip_threshold, "ip"))
        if self.policy.user_threshold > 0:
            scopes.append(Scope(keys["user"], self.policy.user_threshold, "user"))
        return scopes

    def _checked_scopes(self, realm: str, username: str, source_ip: str) -> list[Scope]:
        return [] if self.policy.exempt(source_ip) else self._scopes(realm, username, source_ip)

    @staticmethod
    def _state(scopes: Sequence[Scope], rows: Sequence[tuple[float, int]]) -> LockoutState:
        locked_until = max(row[0] for row in rows)
        user_failures = any(row[1] or row[0] for scope, row in zip(scopes, rows, strict=True) if scope.kind != "ip")
        return LockoutState(locked_until, user_failures)

    async def check(self, realm: str, username: str, source_ip: str) -> LockoutState | None:
        """The state for this attempt, or None when lockout does not apply to it."""
        scopes = self._checked_scopes(realm, username, source_ip)
        if not scopes:
            return None
        return self._state(scopes, await self.store.state([scope.key for scope in scopes]))

    def reads_beside(self, replay: object) -> bool:
        """Whether the state can be read in the replay guard's round trip (same Redis client, pipelined)."""
        return (
            isinstance(self.store, RedisLockoutStore)
            and isinstance(replay, RedisReplayGuard)
            and replay.pipelines_reads
            and self.store.client is replay.client
        )

    async def check_consuming(
        self, realm: str, username: str, source_ip: str, consume: ConsumeReading
    ) -> tuple[LockoutState | None, bool]:
        """:meth:`check` and a replay consume in one round trip: (state, fresh).

        ``consume(keys, fields)`` records the use and reads the hashes beside it
        (``RedisReplayGuard.consume_reading``); only for a :meth:`reads_beside` store.
        """
        scopes = self._checked_scopes(realm, username, source_ip)
        fresh, rows = await consume([scope.key for scope in scopes], RedisLockoutStore.STATE_FIELDS)
        if not scopes:
            return None, fresh
        return self._state(scopes, [RedisLockoutStore.parse_state(row) for row in rows]), fresh

    async def failed(self, realm: str, username: str, source_ip: str) -> list[str]:
        """Record a wrong answer; returns the scopes (user_ip, ip, user) it locked."""
        scopes = self._checked_scopes(realm, username, source_ip)
        if not scopes:
            return []
        imposed = await self.store.fail(scopes, self.policy, self.clock())
        locked = [scope.kind for scope, until in zip(scopes, imposed, strict=True) if until > 0]
        for kind in locked:
            LOCKOUTS.labels(kind).inc()
        if locked:
            log.warning("lockout imposed", extra={"scopes": locked, "realm": realm})
        return locked

    async def succeeded(self, realm: str, username: str, source_ip: str) -> None:
        """Reset the user's counters after a correct answer (never the IP's)."""
        scopes = [s for s in self._scopes(realm, username, source_ip) if s.kind != "ip"]
        if scopes:
            await self.store.clear([scope.key for scope in scopes])

    async def unlock(self, *, realm: str, username: str | None = None, source_ip: str | None = None) -> int:
        """Clear what an operator names: a user (from one IP or all), or an IP; returns counters removed."""
        if username is not None:
            user = _user_hash(realm, username)
            if source_ip:
                keys = scope_keys(realm, username, source_ip)
                await self.store.clear([keys["user"], keys["user_ip"]])
                return 2
            removed = await self.store.clear_matching(f"{KEY_PREFIX}{{ip:*}}:{user}")
            await self.store.clear([scope_keys(realm, username, "")["user"]])
            return removed + 1
        if source_ip:
            return await self.store.clear_matching(f"{KEY_PREFIX}{{ip:{source_ip}}}*")
        raise ValueError("name a user, an IP, or both")
