"""The replay guard on Redis, shared by every sipauth replica.

One key per accepted nonce, hash-tagged so a Cluster keeps it in one slot;
one Lua script checks and records the nonce count atomically. Its TTL is
the nonce's remaining life, so Redis holds only nonces that could still be
replayed. Nothing is written for challenges or wrong answers.

Redis is reached in one of three ways (:class:`RedisEndpoint`): one server
(``redis://``, ``rediss://``, ``unix://``), a master found through Sentinel,
or a Cluster discovered from seed nodes. Every call is bounded by one
timeout, connection and queueing included.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..errors import ReplayStoreUnavailable
from ..metrics import BACKEND_ERRORS, BACKEND_LATENCY

__all__ = [
    "CONSUME_SCRIPT",
    "KEY_PREFIX",
    "RedisEndpoint",
    "RedisReplayGuard",
    "connect",
    "execute_scripted",
    "replay_key",
]

KEY_PREFIX = "sipauth:n:"

# KEYS[1] = the nonce's key; ARGV[1] = nc (0: one use only); ARGV[2] = TTL in ms.
# Returns 1 when the use is fresh (and records it), 0 for a replay.
CONSUME_SCRIPT = """
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

# Labelled once: ``labels()`` costs a lock and a dict lookup on every call.
_CONSUME_LATENCY = BACKEND_LATENCY.labels("redis", "consume")
_PING_ATTEMPTS = 3
_PING_BACKOFF = 0.05


def replay_key(replay_id: str) -> str:
    """The Redis key of one nonce; the braces make it a Cluster hash tag."""
    return f"{KEY_PREFIX}{{{replay_id}}}"


async def execute_scripted(client: Any, script: Any, fill: Callable[[Any], None]) -> list[Any]:
    """Run a pipeline that ``fill`` builds, calling ``script`` by its SHA (EVALSHA).

    Registering a script on a pipeline would cost a SCRIPT EXISTS round trip
    every time; instead, on NOSCRIPT (the script did not run, so repeating is
    safe) it is loaded and the pipeline built and sent once more.
    """
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        try:
            results: list[Any] = await pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt == 2:
                raise
            script.sha = await client.script_load(script.script)
        else:
            return results
    raise AssertionError("unreachable")


def _failure(exc: BaseException) -> ReplayStoreUnavailable:
    # The exception's type only: redis-py messages can carry addresses, never useful to a proxy.
    return ReplayStoreUnavailable(f"replay store failed: {type(exc).__name__}")


Command = tuple[object, ...]


class Coalescer:
    """Sends the Redis commands of calls that wait at the same time in one pipeline.

    Under load many VerifyResponse calls wait on Redis together, and each
    pipeline costs redis-py (connection checkout, packing, parsing) and the
    kernel (a write and a read) far more than one more command in it does.
    At most ``depth`` pipelines are on the wire; calls made meanwhile queue
    and go together in the next one, up to ``max_calls`` calls. A call made
    while fewer are on the wire goes out on the next turn of the event loop,
    so a lone call waits for nothing.

    A pipeline is not a transaction: each call's commands run as they would
    alone (the consume script is atomic by itself) and a command's error is
    its caller's only. A pipeline that fails as a whole (connection lost,
    timeout) fails every call in it, and none is repeated: as for one call,
    a script that may have run is never sent again. A NOSCRIPT answer (the
    script did not run) has the script loaded and that call's commands sent
    once more.
    """

    def __init__(self, client: Any, script: Any, *, depth: int = 1, max_calls: int = 128) -> None:
        self._client = client
        self._script = script
        self._depth = depth
        self._max_calls = max_calls
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to ``commands``, sent with whatever else is waiting; raises the first error reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((commands, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._in_flight < self._depth:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self._depth:
            batch = [item for item in self._pending[: self._max_calls] if not item[1].done()]
            del self._pending[: self._max_calls]
            if batch:
                self._in_flight += 1
                task = loop.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            retry = await self._execute(batch)
            if retry:
                self._script.sha = await self._client.script_load(self._script.script)
                for _, future in await self._execute(retry):
                    _settle(future, error=redis.exceptions.NoScriptError("the consume script could not be loaded"))
        except Exception as exc:  # the pipeline as a whole failed: so did every call in it
            for _, future in batch:
                _settle(future, error=exc)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule(asyncio.get_running_loop())

    async def _execute(
        self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
    ) -> list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]:
        """Send ``batch`` as one pipeline and settle each call; returns the calls answered NOSCRIPT."""
        pipe = self._client.pipeline(transaction=False)
        for commands, _ in batch:
            for command in commands:
                pipe.execute_command(*command)
        replies = await pipe.execute(raise_on_error=False)
        retry = []
        start = 0
        for commands, future in batch:
            mine = replies[start : start + len(commands)]
            start += len(commands)
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in mine):
                retry.append((commands, future))
                continue
            error = next((reply for reply in mine if isinstance(reply, Exception)), None)
            _settle(future, result=mine, error=error)
        return retry


def _settle(
    future: asyncio.Future[list[Any]], *, result: list[Any] | None = None, error: BaseException | None = None
) -> None:
    """Answer a waiting call unless it gave up (timed out or was cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])


class RedisReplayGuard:
    """Consumes nonces with one round trip; every Redis failure is ReplayStoreUnavailable.

    The script is never retried after a failure: if the first attempt ran but
    its answer was lost, a retry would be judged a replay, and if it did not
    run, guessing would risk an ACCEPT without the check. The caller answers
    UNAVAILABLE and the proxy retries the whole transaction. What is safe to
    repeat is repeated: PING (with backoff), a NOSCRIPT answer (the script
    did not run; redis-py loads it and sends it again), Sentinel's master
    lookup and a Cluster's MOVED/ASK redirects (the node refused the command).

    ``timeout`` bounds each call as a whole, and ``max_in_flight`` the calls
    waiting on Redis at once (more wait for a slot, within the same bound).

    With ``wait_replicas`` > 0 a fresh use counts only once that many replicas
    have acknowledged it (``WAIT`` on the same connection): Redis replicates
    asynchronously, and a use recorded on a master that then loses a failover
    would be forgotten by the promoted replica. Unacknowledged, the answer is
    UNAVAILABLE (the use stays recorded: a retry is a replay, never an ACCEPT)
    and the pool is dropped, so the next call asks Sentinel for the master again.
    """

    def __init__(
        self, client: Any, *, timeout: float | None = None, max_in_flight: int = 64, wait_replicas: int = 0
    ) -> None:
        self._client = client
        self._script = client.register_script(CONSUME_SCRIPT)
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wait_replicas = wait_replicas
        # Leave WAIT half the budget, so it answers "not enough" before the call as a whole times out.
        self._wait_ms = max(1, int((timeout or 1.0) * 500))
        self._coalescer = Coalescer(client, self._script) if self.pipelines_reads else None

    @property
    def client(self) -> Any:
        """The Redis client (shared with the lockout counters)."""
        return self._client

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use; True if fresh, False if replayed."""
        ttl_ms = max(1, math.ceil(ttl * 1000))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                if self._coalescer is not None:
                    command = ("EVALSHA", self._script.sha, 1, replay_key(replay_id), nc or 0, ttl_ms)
                    result = (await self._coalescer.run([command]))[0]
                elif self._wait_replicas:
                    result = await self._consume_replicated(replay_key(replay_id), [nc or 0, ttl_ms])
                else:
                    result = await self._script(keys=[replay_key(replay_id)], args=[nc or 0, ttl_ms])
        except (redis.exceptions.RedisError, OSError) as exc:
            # OSError covers TimeoutError, raised by asyncio.timeout.
            BACKEND_ERRORS.labels("redis", "consume").inc()
            raise _failure(exc) from exc
        except ReplayStoreUnavailable:
            BACKEND_ERRORS.labels("redis", "consume").inc()
            raise
        finally:
            _CONSUME_LATENCY.observe(time.perf_counter() - started)
        return int(result) == 1

    @property
    def pipelines_reads(self) -> bool:
        """Whether :meth:`consume_reading` can read beside the consume in one round trip.

        Not on a Cluster (the keys live on different nodes) nor with ``wait_replicas``
        (the consume needs its own connection for WAIT): callers read, then consume.
        """
        return not self._wait_replicas and not isinstance(self._client, RedisCluster)

    async def consume_reading(
        self, replay_id: str, nc: int | None, ttl: float, keys: Sequence[str], fields: Sequence[str]
    ) -> tuple[bool, list[Any]]:
        """:meth:`consume`, and ``HMGET key *fields`` for each of ``keys``, in one pipeline.

        Not a transaction: the reads are a snapshot taken beside the consume, not
        atomic with it. Only where :attr:`pipelines_reads`.
        """
        assert self._coalescer is not None, "consume_reading needs pipelines_reads"
        ttl_ms = max(1, math.ceil(ttl * 1000))
        commands: list[Command] = [("HMGET", read, *fields) for read in keys]
        commands.append(("EVALSHA", self._script.sha, 1, replay_key(replay_id), nc or 0, ttl_ms))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                results = await self._coalescer.run(commands)
        except (redis.exceptions.RedisError, OSError) as exc:
            BACKEND_ERRORS.labels("redis", "consume").inc()
            raise _failure(exc) from exc
        finally:
            _CONSUME_LATENCY.observe(time.perf_counter() - started)
        return int(results[-1]) == 1, list(results[:-1])

    async def _consume_replicated(self, key: str, args: list[int]) -> Any:
        async with self._client.client() as connection:
            result = await self._script(keys=[key], args=args, client=connection)
            if int(result) != 1:
                return result
            acknowledged = await connection.execute_command("WAIT", self._wait_replicas, self._wait_ms)
        if int(acknowledged) < self._wait_replicas:
            await self._client.connection_pool.disconnect()
            raise ReplayStoreUnavailable("replay store failed: the use was not acknowledged by enough replicas")
        return result

    async def _ping_once(self) -> bool:
        async with asyncio.timeout(self._timeout):
            return bool(await self._client.ping())

    async def ping(self) -> bool:
        """Whether Redis answers PING now (a few tries with backoff: PING is safe to repeat)."""
        for attempt in range(_PING_ATTEMPTS):
            try:
                return await self._ping_once()
            except (redis.exceptions.RedisError, OSError):
                if attempt + 1 < _PING_ATTEMPTS:
                    await asyncio.sleep(_PING_BACKOFF * 2**attempt)
        return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where Redis is and how to log in; ``password`` is the only secret (kept out of ``repr``)."""

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    nodes: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    timeout: float = 0.25
    max_connections: int = 64
    wait_replicas: int = 0


def _tls_options(endpoint: RedisEndpoint) -> dict[str, Any]:
    return {
        "ssl_ca_certs": endpoint.tls_ca_file,
        "ssl_certfile": endpoint.tls_cert_file,
        "ssl_keyfile": endpoint.tls_key_file,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }


def _connection_options(endpoint: RedisEndpoint, username: str | None, password: str | None) -> dict[str, Any]:
    """Bounded timeouts, no automatic retries (see RedisReplayGuard's docstring), and the credentials."""
    options: dict[str, Any] = {
        "socket_timeout": endpoint.timeout,
        "socket_connect_timeout": endpoint.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if username is not None:
        options["username"] = username
    if password is not None:
        options["password"] = password
    if endpoint.tls:
        options.update(ssl=True, **_tls_options(endpoint))
    return options


def _common_options(endpoint: RedisEndpoint) -> dict[str, Any]:
    options = _connection_options(endpoint, endpoint.username, endpoint.password)
    options.update(max_connections=endpoint.max_connections, health_check_interval=0)
    return options


def _client(endpoint: RedisEndpoint) -> Any:
    options = _common_options(endpoint)
    if endpoint.mode == "standalone":
        if endpoint.url is None:
            raise ValueError("standalone mode needs a url")
        if endpoint.url.startswith("rediss://"):
            options.update(_tls_options(endpoint))
        return redis.asyncio.Redis.from_url(endpoint.url, **options)
    if endpoint.mode == "sentinel":
        sentinel_options = _connection_options(endpoint, endpoint.sentinel_username, endpoint.sentinel_password)
        sentinel = Sentinel(list(endpoint.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        return sentinel.master_for(endpoint.master_name, db=endpoint.db, **options)
    options.pop("health_check_interval")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in endpoint.nodes],
        # A MOVED reply is followed (the command did not run); this is about failures.
        require_full_coverage=True,
        **options,
    )


def connect(endpoint: RedisEndpoint) -> RedisReplayGuard:
    """A guard on the Redis described by ``endpoint``; nothing is dialled until the first call."""
    if endpoint.mode == "cluster" and endpoint.wait_replicas:
        raise ValueError("wait_replicas is for standalone and sentinel modes")
    return RedisReplayGuard(
        _client(endpoint),
        timeout=endpoint.timeout,
        max_in_flight=endpoint.max_connections,
        wait_replicas=endpoint.wait_replicas,
    )
