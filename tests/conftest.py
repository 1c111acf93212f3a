"""Shared fixtures: real servers on free loopback ports in temp dirs, stopped afterwards."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipauth.app import RunningServer, start_server
from sipauth.config import Settings, load_settings
from sipauth_client import AsyncSipauthClient
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import EXAMPLES, SipauthProcess

#: The demo users of examples/users.yaml.
USERS = {"alice": "wonderland", "bob": "builder"}
REALM = "example.test"


@pytest.fixture
def nonce_keys_file(tmp_path: Path) -> Path:
    """A nonce key file shared by every sipauth process of one test."""
    path = tmp_path / "nonce-keys"
    path.write_text(hashlib.sha256(str(tmp_path).encode()).hexdigest() + "\n")
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def example_settings(**overrides: Any) -> Settings:
    """examples/sipauth.yaml on a free port, with overrides applied."""
    base = load_settings(EXAMPLES / "sipauth.yaml", environ={})
    data = base.model_dump()
    data.update({"listen": "127.0.0.1:0", **overrides})
    return Settings.model_validate(data)


@pytest.fixture
async def server_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start in-process gRPC servers from example settings plus overrides; stop them at teardown."""
    running: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        server = await start_server(example_settings(**overrides))
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(0)


@pytest.fixture(params=["main", "proxy_port"])
def port_kind(request: pytest.FixtureRequest) -> str:
    """Which port a test calls: the main one (grpc.aio), or the proxies' (proxy_listen, same TLS)."""
    kind: str = request.param
    return kind


def ports_for(kind: str) -> dict[str, Any]:
    """Settings overrides for ``kind``: the proxies' port on a free port, or nothing."""
    return {"proxy_listen": "127.0.0.1:0"} if kind == "proxy_port" else {}


def target_of(server: RunningServer) -> str:
    """host:port to call: the proxies' port when the server has one, else the main port."""
    port = server.proxy.port if server.proxy is not None else server.port
    return f"127.0.0.1:{port}"


@pytest.fixture
async def server(server_factory: Callable[..., Any]) -> RunningServer:
    """One in-process server on the example settings (memory replay guard, demo users)."""
    running: RunningServer = await server_factory()
    return running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[AsyncSipauthClient]:
    """An asyncio client of ``server``."""
    async with AsyncSipauthClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as c:
        yield c


@pytest.fixture
def sipauth_process(tmp_path: Path) -> Iterator[Callable[..., SipauthProcess]]:
    """Start real ``python -m sipauth serve`` processes; stop them at teardown."""
    procs: list[SipauthProcess] = []

    def start(settings: dict[str, Any], name: str = "sipauth", env: dict[str, str] | None = None) -> SipauthProcess:
        merged = {"users_file": str(EXAMPLES / "users.yaml"), **settings}
        proc = SipauthProcess(tmp_path / f"{name}-{len(procs)}", merged, env).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
