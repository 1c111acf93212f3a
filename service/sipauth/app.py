"""Wiring and lifecycle: settings -> components -> a serving grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from .authenticator import Authenticator, RequestLimits
from .client_allowlist import ClientAllowlist
from .config import ConfigError, Settings, format_listen, parse_listen
from .credentials import CredentialSource, UsersFile, UsersFileError
from .digest import Limits
from .lockout import FallbackLockoutStore, Lockout, LockoutStore, MemoryLockoutStore, RedisLockoutStore
from .metrics import HEALTH_SERVING
from .nonce import NonceKeyring
from .replay import MemoryReplayGuard, ReplayGuard
from .replay.fallback import FallbackReplayGuard
from .replay.redis import RedisEndpoint, RedisReplayGuard, connect
from .server import SERVICE_NAME, AuthServicer, generic_handler
from .server.client_identity import ClientIdentityInterceptor
from .server.proxy_port import ProxyPort, start_proxy_port
from .server.servicer import calls_in_flight
from .server.tls import ReloadingContext, server_credentials

__all__ = ["App", "RunningServer", "build_app", "serve", "server_options", "start_server"]

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

log = logging.getLogger("sipauth")
_HEALTH_INTERVAL = 2.0
# Shutdown: no call in flight for this long means the rest are idle connections.
_SETTLE = 0.2


@dataclass
class App:
    """The running parts of one sipauth process."""

    settings: Settings
    authenticator: Authenticator
    replay: ReplayGuard
    credentials: CredentialSource

    def reload(self) -> None:
        """SIGHUP: re-read the users file and the nonce keys; on error keep what is in force."""
        reload_users = getattr(self.credentials, "reload", None)
        try:
            # Keys are read (and checked) first: a bad key file must leave the users untouched too.
            secrets = self.settings.nonce_secrets()
            keyring = NonceKeyring(secrets) if secrets is not None else None
            if reload_users is not None:
                reload_users()
            if keyring is not None:
                self.authenticator.keyring = keyring
        except (ConfigError, ValueError) as exc:
            log.error("reload failed: keeping the previous users and keys", extra={"error": str(exc)})  # noqa: TRY400
            return
        log.info("reloaded", extra={"key_ids": list(self.authenticator.keyring.key_ids)})

    async def close(self) -> None:
        """Release backend connections."""
        await self.replay.close()
        await self.credentials.close()


def replay_guard_for(settings: Settings) -> ReplayGuard:
    """The replay guard the settings describe (memory, Redis, or Redis with a memory fallback)."""
    redis = settings.redis
    if not redis.enabled:
        log.info("replay state in memory: this process alone can verify its nonces' replays")
        return MemoryReplayGuard(max_entries=settings.memory_replay_max_entries)

    def path(value: object) -> str | None:
        return None if value is None else str(value)

    shared = connect(
        RedisEndpoint(
            mode=redis.mode,
            url=redis.url,
            sentinels=tuple(parse_listen(address) for address in redis.sentinels),
            master_name=redis.master_name or "",
            nodes=tuple(parse_listen(address) for address in redis.nodes),
            db=redis.db,
            username=redis.username,
            password=redis.resolved_password(),
            sentinel_username=redis.sentinel_username,
            sentinel_password=None if redis.sentinel_password is None else redis.sentinel_password.get_secret_value(),
            tls=redis.tls,
            tls_ca_file=path(redis.tls_ca_file),
            tls_cert_file=path(redis.tls_cert_file),
            tls_key_file=path(redis.tls_key_file),
            timeout=redis.timeout_ms / 1000,
            max_connections=redis.max_connections,
            wait_replicas=redis.wait_replicas,
        )
    )
    log.info(
        "replay state in Redis",
        extra={"redis_mode": redis.mode, "failure_policy": redis.failure_policy, "timeout_ms": redis.timeout_ms},
    )
    if redis.failure_policy == "fail_closed":
        return shared

    return FallbackReplayGuard(shared, MemoryReplayGuard(max_entries=settings.memory_replay_max_entries))


def _credential_source(settings: Settings) -> CredentialSource:
    if settings.ldap is not None:
        from .credentials.ldap import cached_ldap_source

        try:
            return cached_ldap_source(settings.ldap, settings.default_realm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if settings.users_file is None:
        raise ConfigError("users_file: no credential source is configured")
    try:
        return UsersFile(settings.users_file, settings.default_realm)
    except UsersFileError as exc:
        raise ConfigError(str(exc)) from None


def _keyring(settings: Settings) -> NonceKeyring:
    secrets = settings.nonce_secrets()
    if secrets is None:
        log.warning(
            "no nonce_keys_file configured: using a random key; other replicas will not accept "
            "this process's nonces and they die with it"
        )
        secrets = [os.urandom(32)]
    keyring = NonceKeyring(secrets)
    log.info("nonce keys loaded", extra={"key_ids": list(keyring.key_ids)})
    return keyring


def lockout_for(settings: Settings, replay: ReplayGuard) -> Lockout | None:
    """Brute-force counters beside the replay state: in Redis when it is configured, else in memory."""
    policy = settings.lockout.to_policy()
    if not policy.enabled:
        return None
    if not settings.redis.enabled:
        return Lockout(policy, MemoryLockoutStore())
    # The same client as the replay guard: the lockout state read can share its round trip.
    shared = replay.primary if isinstance(replay, FallbackReplayGuard) else replay
    assert isinstance(shared, RedisReplayGuard)
    store: LockoutStore = RedisLockoutStore(shared.client)
    if settings.redis.failure_policy == "local_fallback":
        store = FallbackLockoutStore(store, MemoryLockoutStore())
    return Lockout(policy, store)


def build_app(settings: Settings) -> App:
    """Build every component from validated settings; raise ConfigError on a bad file."""
    credentials = _credential_source(settings)
    replay = replay_guard_for(settings)
    authenticator = Authenticator(
        default_realm=settings.default_realm,
        policies=settings.policies(),
        keyring=_keyring(settings),
        replay=replay,
        credentials=credentials,
        lockout=lockout_for(settings, replay),
        limits=RequestLimits(
            header=Limits(max_header_length=settings.max_header_length),
            max_body_bytes=settings.max_body_bytes,
        ),
    )
    return App(settings, authenticator, replay, credentials)


#: Health service names. Liveness is SERVING while the process runs (a dead LDAP must not get
#: every pod restarted); readiness, "" and the service's own name follow the backends.
LIVENESS = "liveness"
READINESS_NAMES = ("", "readiness", SERVICE_NAME)


async def _check_backends(app: App, health: HealthServicer, last: int | None) -> int:
    """Set readiness from one round of backend pings; returns the status set."""
    ok = await app.replay.ping() and await app.credentials.ping()
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    if status != last:
        if last is not None:
            log.warning("health changed", extra={"serving": ok})
        for name in READINESS_NAMES:
            await health.set(name, status)
        HEALTH_SERVING.set(1 if ok else 0)
    return int(status)


async def _follow_backends(app: App, health: HealthServicer, last: int) -> None:
    """Keep readiness in step with the backends the decision needs."""
    while True:
        await asyncio.sleep(_HEALTH_INTERVAL)
        last = await _check_backends(app, health, last)


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    port: int
    app: App
    health: HealthServicer
    monitor: asyncio.Task[None]
    servicer: AuthServicer
    #: The plaintext grpc.health.v1-only server of ``health_listen``, and its port.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    #: The proxies' lean port of ``proxy_listen``.
    proxy: ProxyPort | None = None

    async def stop(self, grace: float) -> None:
        """Go NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``, release backends."""
        self.monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.monitor
        await self.health.enter_graceful_shutdown()
        self.servicer.drain()
        proxy_stopping = asyncio.ensure_future(self.proxy.stop(grace)) if self.proxy is not None else None
        stopping = asyncio.ensure_future(self.server.stop(grace))
        # Calls in flight get the grace period; idle connections do not hold the shutdown to its end
        # (an Exchange client between calls is not reading: it meets the GOAWAY on its next call).
        loop = asyncio.get_running_loop()
        deadline, quiet_since = loop.time() + grace, None
        while not stopping.done() and loop.time() < deadline:
            if calls_in_flight():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= _SETTLE:
                await self.server.stop(0)
                break
            await asyncio.wait((stopping,), timeout=0.05)
        await stopping
        if proxy_stopping is not None:
            await proxy_stopping
        if self.health_server is not None:
            # Stopped last, so that probes see NOT_SERVING while the main port drains.
            await self.health_server.stop(0)
        await self.app.close()


def _bind(server: grpc.aio.Server, field: str, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add ``listen`` to ``server`` (TLS with ``credentials``); the bound port, or ConfigError naming ``field``."""
    host, port = parse_listen(listen)
    address = format_listen(host, port)
    try:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        raise ConfigError(f"{field}: cannot bind {listen}") from exc


def server_options(settings: Settings, *, reuse_port: bool) -> list[tuple[str, int]]:
    """The grpc.aio server options of the main port (the benchmark's baseline server uses them too)."""
    max_message = settings.max_body_bytes + settings.max_header_length + 64 * 1024
    return [("grpc.max_receive_message_length", max_message), ("grpc.so_reuseport", int(reuse_port))]


async def start_server(settings: Settings, *, reuse_port: bool = False) -> RunningServer:
    """Build the app and start serving it on ``settings.listen`` (port 0: any free port).

    ``reuse_port``: share the port with sibling worker processes (SO_REUSEPORT).
    """
    tls = settings.tls
    credentials = None if tls is None else server_credentials(tls)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tls is not None and tls.client_ca_file is not None:
        interceptors.append(ClientIdentityInterceptor(ClientAllowlist(tls.allowed_clients)))
    app = build_app(settings)
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings, reuse_port=reuse_port))
    servicer = AuthServicer(app.authenticator)
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, HEALTH_SERVICE_NAME), server)
    host, _ = parse_listen(settings.listen)
    health_server, health_port = None, 0
    try:
        bound = _bind(server, "listen", settings.listen, credentials)
        if settings.health_listen is not None:
            # Kubernetes' gRPC probes cannot do TLS: health (no secrets in it) on its own plaintext port.
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
            health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
            health_port = _bind(health_server, "health_listen", settings.health_listen, None)
    except ConfigError:
        await app.close()
        raise
    try:
        proxy = await _start_proxy_port(settings, servicer, reuse_port=reuse_port)
    except ConfigError:
        await app.close()
        raise
    await server.start()
    if health_server is not None:
        await health_server.start()
    await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    monitor = asyncio.create_task(_follow_backends(app, health, await _check_backends(app, health, None)))
    log.info(
        "serving",
        extra={
            "listen": format_listen(host, bound),
            "realm": settings.default_realm,
            "tls": "none" if tls is None else "mutual" if tls.client_ca_file is not None else "server",
            "health_port": health_port or None,
            "proxy_port": proxy.port if proxy is not None else None,
        },
    )
    return RunningServer(server, bound, app, health, monitor, servicer, health_server, health_port, proxy)


async def _start_proxy_port(settings: Settings, servicer: AuthServicer, *, reuse_port: bool) -> ProxyPort | None:
    """The lean port of ``proxy_listen`` (None when unset), with the main port's TLS and message limit."""
    if settings.proxy_listen is None:
        return None
    host, port = parse_listen(settings.proxy_listen)
    tls = settings.tls
    context = None if tls is None else ReloadingContext.create(tls, ["h2"])
    allowlist = None if tls is None else ClientAllowlist(tls.allowed_clients)
    max_message = dict(server_options(settings, reuse_port=reuse_port))["grpc.max_receive_message_length"]
    try:
        return await start_proxy_port(
            servicer,
            host,
            port,
            max_message=max_message,
            ssl_context=context,
            allowlist=allowlist,
            reuse_port=reuse_port,
        )
    except OSError as exc:
        raise ConfigError(f"proxy_listen: cannot bind {settings.proxy_listen}: {exc.strerror}") from None


def serve_metrics(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """Start the Prometheus endpoint of ``metrics.listen``, if set (``registry``: default one)."""
    if settings.metrics.listen is None:
        return
    host, port = parse_listen(settings.metrics.listen)
    start_http_server(port, addr=host, registry=REGISTRY if registry is None else registry)


async def serve(settings: Settings, *, worker: bool = False, ready_file: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls within the grace period; SIGHUP reloads.

    ``worker``: one of several processes under the supervisor, which serves the metrics.
    """
    running = await start_server(settings, reuse_port=worker)
    if not worker:
        serve_metrics(settings)
    # Everything built so far (modules, settings, protobuf descriptors, the server) lives as long as
    # the process: moved out of the collector's sight, full collections stop walking it on the
    # request path, and their pauses stop showing in the tail latency.
    gc.collect()
    gc.freeze()
    host, _ = parse_listen(settings.listen)
    if not worker:
        # Tests and scripts read this line to learn the port when listen asks for port 0. Under the
        # supervisor, it prints the line itself once every worker serves (a worker's would come early).
        if running.proxy is not None:
            proxy_host, _ = parse_listen(settings.proxy_listen or "")
            print(f"sipauth proxy port on {format_listen(proxy_host, running.proxy.port)}", flush=True)
        print(f"sipauth listening on {format_listen(host, running.port)}", flush=True)
    if ready_file is not None:
        ready_file.touch()  # noqa: ASYNC240 - once at start; tells the supervisor this worker serves
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.app.reload)
    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
