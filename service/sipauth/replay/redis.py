"""The replay guard on Redis, shared by every sipauth replica.

One key per accepted nonce, hash-tagged so a Cluster keeps it in one slot;
one Lua script checks and records the nonce count atomically. Its TTL is
the nonce's remaining life, so Redis holds only nonces that could still be
replayed. Nothing is written for challenges or wrong answers.
"""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import ReplayStoreUnavailable

__all__ = ["KEY_PREFIX", "RedisReplayGuard", "connect", "replay_key"]

KEY_PREFIX = "sipauth:n:"

# KEYS[1] = the nonce's key; ARGV[1] = nc (0: one use only); ARGV[2] = TTL in ms.
# Returns 1 when the use is fresh (and records it), 0 for a replay.
_CONSUME = """
local nc = tonumber(ARGV[1])
if nc == 0 then
  if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[2]) then return 1 end
  return 0
end
local last = redis.call('GET', KEYS[1])
if last and (last == '0' or tonumber(last) >= nc) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def replay_key(replay_id: str) -> str:
    """The Redis key of one nonce; the braces make it a Cluster hash tag."""
    return f"{KEY_PREFIX}{{{replay_id}}}"


class RedisReplayGuard:
    """Consumes nonces with one round trip; every Redis failure is ReplayStoreUnavailable.

    The script is never retried after a failure: if the first attempt ran but
    its answer was lost, a retry would be judged a replay, and if it did not
    run, guessing would risk an ACCEPT without the check. The caller answers
    UNAVAILABLE and the proxy retries the whole transaction.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._script = client.register_script(_CONSUME)

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use; True if fresh, False if replayed."""
        ttl_ms = max(1, math.ceil(ttl * 1000))
        try:
            result = await self._script(keys=[replay_key(replay_id)], args=[nc or 0, ttl_ms])
        except redis.exceptions.RedisError as exc:
            raise ReplayStoreUnavailable(f"replay store failed: {type(exc).__name__}") from exc
        except OSError as exc:
            raise ReplayStoreUnavailable(f"replay store failed: {type(exc).__name__}") from exc
        return int(result) == 1

    async def ping(self) -> bool:
        """Whether Redis answers PING now."""
        try:
            return bool(await self._client.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def connect(url: str, *, timeout: float, max_connections: int) -> RedisReplayGuard:
    """A guard on the Redis at ``url`` (redis:// or rediss://), with bounded timeouts."""
    client = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max_connections,
        # No automatic retries: see RedisReplayGuard's docstring.
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return RedisReplayGuard(client)
