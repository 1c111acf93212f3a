"""End-to-end stack: SIP clients -> Kamailio (clients/kamailio) -> sipauth (a real process) -> Redis + slapd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REALM, USERS
from tests.support.kamailio import Kamailio, free_udp_port
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer
from tests.support.sipauth_process import SipauthProcess
from tests.support.sipp import SippServer
from tests.support.slapd import LdapUser, SlapdServer, start_slapd


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[SlapdServer]:
    """A slapd holding the demo users (their HA1s), read by sipauth through its service account."""
    server = start_slapd(tmp_path / "ldap", [LdapUser(name, password) for name, password in USERS.items()])
    yield server
    server.stop()


@pytest.fixture
def sipauth_settings(redis_server: RedisServer, slapd: SlapdServer, nonce_keys_file: Path) -> dict[str, Any]:
    """sipauth in its production shape: Redis replay guard, LDAP credentials, a fixed port (it may be restarted).

    MD5 is offered first because SIPp answers only the first challenge and computes only MD5;
    nonces are bound to the source IP and Call-ID, so a proxy that did not pass them would fail.
    """
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "default_realm": REALM,
        "redis": {"url": redis_server.url},
        "nonce_keys_file": str(nonce_keys_file),
        "users_file": None,
        "ldap": slapd.sipauth_settings("openldap"),
        "policy": {
            "algorithms": ["MD5", "SHA-256"],
            "qop": ["auth"],
            "bind_source_ip": True,
            "bind_call_id": True,
        },
        "log_level": "warning",
    }


@pytest.fixture
def sipauth(sipauth_process: Callable[..., SipauthProcess], sipauth_settings: dict[str, Any]) -> SipauthProcess:
    """One sipauth process for the test."""
    return sipauth_process(sipauth_settings)


@pytest.fixture
def kamailio_factory(tmp_path: Path) -> Iterator[Callable[..., Kamailio]]:
    """Start Kamailio instances running the recipe; stopped at teardown."""
    started: list[Kamailio] = []

    def start(target: str, name: str = "kamailio", **kwargs: Any) -> Kamailio:
        instance = Kamailio(tmp_path / f"{name}-{len(started)}", target, **kwargs)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def kamailio(kamailio_factory: Callable[..., Kamailio], sipauth: SipauthProcess) -> Kamailio:
    """One Kamailio in front of ``sipauth``."""
    return kamailio_factory(sipauth.target)


@pytest.fixture
def uas_factory(tmp_path: Path) -> Iterator[Callable[[str], SippServer]]:
    """Start SIPp user agent servers on free UDP ports; stopped at teardown."""
    started: list[SippServer] = []

    def start(scenario: str) -> SippServer:
        server = SippServer(tmp_path / f"uas-{len(started)}", scenario, free_udp_port()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
