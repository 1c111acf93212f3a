"""Wiring and lifecycle: settings -> components -> a serving grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from .authenticator import Authenticator, RequestLimits
from .config import ConfigError, Settings, parse_listen
from .credentials import CredentialSource, UsersFile, UsersFileError
from .digest import Limits
from .nonce import NonceKeyring
from .replay import MemoryReplayGuard, ReplayGuard
from .server import SERVICE_NAME, AuthServicer, generic_handler

__all__ = ["App", "RunningServer", "build_app", "serve", "start_server"]

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

log = logging.getLogger("sipauth")
_HEALTH_INTERVAL = 2.0


@dataclass
class App:
    """The running parts of one sipauth process."""

    settings: Settings
    authenticator: Authenticator
    replay: ReplayGuard
    credentials: CredentialSource

    async def close(self) -> None:
        """Release backend connections."""
        await self.replay.close()
        await self.credentials.close()


def _replay_guard(settings: Settings) -> ReplayGuard:
    if settings.redis.url is None:
        log.info("replay state in memory: this process alone can verify its nonces' replays")
        return MemoryReplayGuard(max_entries=settings.memory_replay_max_entries)
    from .replay.redis import connect

    return connect(
        settings.redis.url,
        timeout=settings.redis.timeout_ms / 1000,
        max_connections=settings.redis.max_connections,
    )


def _credential_source(settings: Settings) -> CredentialSource:
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


def build_app(settings: Settings) -> App:
    """Build every component from validated settings; raise ConfigError on a bad file."""
    credentials = _credential_source(settings)
    replay = _replay_guard(settings)
    authenticator = Authenticator(
        default_realm=settings.default_realm,
        policies=settings.policies(),
        keyring=_keyring(settings),
        replay=replay,
        credentials=credentials,
        limits=RequestLimits(
            header=Limits(max_header_length=settings.max_header_length),
            max_body_bytes=settings.max_body_bytes,
        ),
    )
    return App(settings, authenticator, replay, credentials)


async def _follow_backends(app: App, health: HealthServicer) -> None:
    """Keep the health status in step with the backends the decision needs."""
    last: int | None = None
    while True:
        ok = await app.replay.ping() and await app.credentials.ping()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != last:
            if last is not None:
                log.warning("health changed", extra={"serving": ok})
            for name in ("", SERVICE_NAME):
                await health.set(name, status)
            last = status
        await asyncio.sleep(_HEALTH_INTERVAL)


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    port: int
    app: App
    health: HealthServicer
    monitor: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        """Go NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``, release backends."""
        self.monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.monitor
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.app.close()


async def start_server(settings: Settings) -> RunningServer:
    """Build the app and start serving it on ``settings.listen`` (port 0: any free port)."""
    app = build_app(settings)
    max_message = settings.max_body_bytes + settings.max_header_length + 64 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((generic_handler(AuthServicer(app.authenticator)),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, HEALTH_SERVICE_NAME), server)
    host, port = parse_listen(settings.listen)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError as exc:
        await app.close()
        raise ConfigError(f"listen: cannot bind {settings.listen}") from exc
    await server.start()
    monitor = asyncio.create_task(_follow_backends(app, health))
    log.info("serving", extra={"listen": f"{host}:{bound}", "realm": settings.default_realm})
    return RunningServer(server, bound, app, health, monitor)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls within the grace period."""
    running = await start_server(settings)
    host, _ = parse_listen(settings.listen)
    # Tests and scripts read this line to learn the port when listen asks for port 0.
    print(f"sipauth listening on {host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
