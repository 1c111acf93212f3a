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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import hiredis
import redis.asyncio
import redis.exceptions
from redis._parsers.base import BaseParser
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
# Past this much unsent data, a writer waits for the socket (Redis not reading fast enough).
_WRITE_BUFFER_LIMIT = 1 << 20
# One command in RESP. hiredis's stub types the argument as a one-element tuple; it takes any length.
_pack: Callable[[Command], bytes] = hiredis.pack_command  # type: ignore[assignment]
# What the reader asks the socket for at once.
_READ_SIZE = 1 << 16
# Error replies as redis-py types them (NOSCRIPT -> NoScriptError, READONLY -> ReadOnlyError...).
_parse_error = BaseParser.parse_error


class DirectPipeline:
    """The consume path's own connection to the master: every call writes its commands at once.

    redis-py spends more CPU on a call's bookkeeping (connection checkout,
    packing, a task per timeout, response callbacks) than the kernel and
    Redis spend on its round trip. Here each call's commands are written to
    one connection as soon as the call is made, and one reader hands the
    replies out in order (Redis answers a connection's commands in the order
    it got them): calls made together share the round trip without waiting
    for each other. The connection itself is made by redis-py, so TLS,
    AUTH/ACL users, SELECT and Sentinel's master lookup are redis-py's.

    Two more savings matter under load, where a system call costs more than
    the Python around it: commands queued during one turn of the event loop
    leave in one write at the end of that turn, and the reader takes what
    the socket holds in one read and parses every complete reply in it
    (hiredis), instead of one ``read_response`` per reply.

    The guard's failure rules hold: a lost connection fails every call
    waiting on it and nothing is sent again (a script that may have run is
    never repeated); a call that gives up (timeout) drops the connection,
    whose state is then unknown, and the next call dials again; a NOSCRIPT
    reply (the script did not run) has the script loaded and that call's
    commands sent once more; READONLY (a master demoted by a failover) drops
    the connection, so the next call asks Sentinel for the master again.
    """

    def __init__(self, client: Any, script: Any) -> None:
        self._client = client
        self._script = script
        self._connection: Any = None
        self._pending: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._dialing = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._loading: asyncio.Future[list[Any]] | None = None
        # Packed commands waiting for the end of this turn of the event loop, and whether a flush is due.
        self._outbox: list[bytes] = []
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by _dial, before any use

    @property
    def connected(self) -> bool:
        """Whether a connection is up (a call needs no dialling)."""
        return self._connection is not None

    async def run(self, commands: Sequence[Command], bound: float | None = None) -> list[Any]:
        """The replies to ``commands``; raises the first error reply, or the connection's failure.

        ``bound`` (seconds) bounds each round trip with a timer on the call's own
        answer: past it the connection is dropped and the call fails with
        TimeoutError, as when a caller gives up.
        """
        replies = await self._send(commands, bound)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            await self._load_script(bound)
            replies = await self._send(commands, bound)
        for reply in replies:
            if isinstance(reply, Exception):
                if str(reply).startswith(("READONLY", "MASTERDOWN")):
                    self._drop(redis.exceptions.ConnectionError("the master changed"))
                raise reply
        return replies

    async def _load_script(self, bound: float | None) -> None:
        """SCRIPT LOAD on this connection, once for all the calls that met NOSCRIPT together."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._send([("SCRIPT", "LOAD", self._script.script)], bound))
        (reply,) = await asyncio.shield(self._loading)
        if isinstance(reply, Exception):
            raise reply
        self._script.sha = reply.decode() if isinstance(reply, bytes) else str(reply)

    async def _send(self, commands: Sequence[Command], bound: float | None = None) -> list[Any]:
        connection = self._connection or await self._dial()
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        pending = self._pending
        pending.append((future, len(commands), []))
        # The replies come back in the order the commands were queued, which is the order of ``pending``.
        # hiredis packs str, bytes and int arguments as redis-py does, without its per-argument encoder.
        self._outbox += map(_pack, commands)
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush, connection)
        timer = None if bound is None else loop.call_later(bound, self._expire, future, pending)
        try:
            writer = connection._writer
            if writer.transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
                await writer.drain()
        except (OSError, AttributeError) as exc:
            self._drop(redis.exceptions.ConnectionError(f"writing to Redis failed: {type(exc).__name__}"))
            raise redis.exceptions.ConnectionError("writing to Redis failed") from exc
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (its timeout): whatever this connection still owes is in doubt.
            if pending is self._pending:
                self._drop(redis.exceptions.TimeoutError("a call on the connection timed out"))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, future: asyncio.Future[list[Any]], pending: object) -> None:
        """A call's time is up: its answer is in doubt, and so is everything after it on the connection."""
        if not future.done() and pending is self._pending:
            self._drop(redis.exceptions.TimeoutError("a call on the connection timed out"))

    def _flush(self, connection: Any) -> None:
        """Write what this turn of the event loop queued, in one system call."""
        self._flush_due = False
        outbox, self._outbox = self._outbox, []
        if connection is not self._connection or not outbox:
            return  # dropped meanwhile: its calls have failed already
        try:
            connection._writer.writelines(outbox)  # redis-py's stream, written without its per-call task
        except (OSError, AttributeError) as exc:
            self._drop(redis.exceptions.ConnectionError(f"writing to Redis failed: {type(exc).__name__}"))

    async def _dial(self) -> Any:
        async with self._dialing:
            if self._connection is None:
                connection = self._client.connection_pool.make_connection()
                await connection.connect()
                self._pending = deque()
                self._connection = connection
                # Kept: asyncio.get_running_loop() makes a getpid() system call each time (Python 3.11).
                self._loop = asyncio.get_running_loop()
                self._reader = self._loop.create_task(self._read(connection, self._pending))
            return self._connection

    async def _read(self, connection: Any, pending: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]]) -> None:
        # redis-py has consumed the handshake's replies (AUTH, HELLO, SELECT): what the stream holds
        # from here on answers our commands. Error replies come back as values, parsed as redis-py
        # parses them (NOSCRIPT -> NoScriptError...): that command's answer, the connection is fine.
        parser = hiredis.Reader(protocolError=redis.exceptions.InvalidResponse, replyError=_parse_error)
        stream = connection._reader
        try:
            while True:
                data = await stream.read(_READ_SIZE)
                if not data:
                    _closed()
                parser.feed(data)
                while (reply := parser.gets(False)) is not False:
                    if not pending:
                        _unexpected()
                    future, count, replies = pending[0]
                    replies.append(reply)
                    if len(replies) == count:
                        pending.popleft()
                        if not future.done():
                            future.set_result(replies)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection is lost: so is every call waiting on it
            if pending is self._pending:
                self._drop(redis.exceptions.ConnectionError(f"reading from Redis failed: {type(exc).__name__}"))
            else:
                _fail(pending, redis.exceptions.ConnectionError("the connection was dropped"))

    def _drop(self, error: Exception) -> None:
        """Forget the connection; its waiting calls fail with ``error``."""
        connection, reader, pending = self._connection, self._reader, self._pending
        self._connection, self._reader, self._pending = None, None, deque()
        self._outbox = []
        _fail(pending, error)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if connection is not None:
            task = asyncio.get_running_loop().create_task(connection.disconnect(nowait=True))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Drop the connection and wait until it is closed."""
        self._drop(redis.exceptions.ConnectionError("closed"))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _unexpected() -> None:
    raise redis.exceptions.ConnectionError("a reply nobody asked for")


def _closed() -> None:
    raise redis.exceptions.ConnectionError("Redis closed the connection")


def _fail(pending: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]], error: Exception) -> None:
    while pending:
        future = pending.popleft()[0]
        if not future.done():
            future.set_exception(error)


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
        self._direct = DirectPipeline(client, self._script) if self.pipelines_reads else None

    @property
    def client(self) -> Any:
        """The Redis client (shared with the lockout counters)."""
        return self._client

    async def consume(self, replay_id: str, nc: int | None, ttl: float) -> bool:
        """Record the use; True if fresh, False if replayed."""
        ttl_ms = max(1, math.ceil(ttl * 1000))
        started = time.perf_counter()
        try:
            if self._direct is not None:
                command = ("EVALSHA", self._script.sha, 1, replay_key(replay_id), nc or 0, ttl_ms)
                result = (await self._run_direct([command]))[0]
            else:
                async with asyncio.timeout(self._timeout), self._slots:
                    if self._wait_replicas:
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

    async def _run_direct(self, commands: Sequence[Command]) -> list[Any]:
        """``commands`` on the direct pipeline, within a slot and the timeout."""
        direct = self._direct
        assert direct is not None
        if direct.connected and not self._slots.locked():
            # The common case, nothing to wait for but the answer: bounded by the pipeline's own timer
            # (asyncio.timeout costs a task lookup and two getpid system calls).
            async with self._slots:
                return await direct.run(commands, self._timeout)
        async with asyncio.timeout(self._timeout), self._slots:
            return await direct.run(commands)

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
        assert self._direct is not None, "consume_reading needs pipelines_reads"
        ttl_ms = max(1, math.ceil(ttl * 1000))
        commands: list[Command] = [("HMGET", read, *fields) for read in keys]
        commands.append(("EVALSHA", self._script.sha, 1, replay_key(replay_id), nc or 0, ttl_ms))
        started = time.perf_counter()
        try:
            results = await self._run_direct(commands)
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
        """Close the connections."""
        if self._direct is not None:
            await self._direct.close()
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
        sentinel = Sentinel(list(endpoint.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8.2
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
