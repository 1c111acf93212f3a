"""Fixtures for the LDAP and Active Directory tests: real slapd and Samba servers, and a UA that logs in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipauth.app import RunningServer
from sipauth_client import AsyncSipauthClient, answer_challenge, auth_pb2, parse_challenge
from tests.support.samba import SambaDC, start_samba
from tests.support.slapd import LdapUser, SlapdServer, start_slapd

URI = "sip:example.test"

#: Everyone in the slapd fixtures; SIP passwords.
SLAPD_USERS = (
    LdapUser("alice", "wonderland", display_name="Alice Liddell", groups=["sip"], mail="alice@example.test"),
    LdapUser("bob", "builder", display_name="Bob the Builder", groups=["sip"]),
    LdapUser("carol", "carrots", display_name="Carol Outsider"),
    LdapUser("dave", "disabled-pw", groups=["sip"], disabled=True),
    LdapUser("erin", "locked-pw", groups=["sip"], locked=True),
)


async def login(
    client: AsyncSipauthClient, username: str, password: str, algorithm: str = "SHA-256"
) -> auth_pb2.VerifyResponseResponse:
    """Get a challenge for ``algorithm``, answer it as a phone would, and return the verdict."""
    challenge = await client.issue_challenge(method="REGISTER", request_uri=URI, algorithms=[algorithm])
    authorization = answer_challenge(
        parse_challenge(challenge.header_values[0]), username=username, password=password, method="REGISTER", uri=URI
    )
    return await client.verify_response(authorization=authorization, method="REGISTER", request_uri=URI)


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[SlapdServer]:
    """A slapd with inetOrgPerson + sipauth + H.350.4 schemas and SLAPD_USERS."""
    server = start_slapd(tmp_path / "slapd", SLAPD_USERS)
    yield server
    server.stop()


@pytest.fixture
def slapd_ad(tmp_path: Path) -> Iterator[SlapdServer]:
    """A slapd with the Active Directory look-alike schema and SLAPD_USERS (HA1s in ``info``)."""
    server = start_slapd(tmp_path / "slapd-ad", SLAPD_USERS, flavour="ad")
    yield server
    server.stop()


@pytest.fixture
async def sipauth_ldap(server_factory: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """Start an in-process sipauth on the given ``ldap:`` settings and return an asyncio client of it."""
    clients: list[AsyncSipauthClient] = []

    async def start(ldap: dict[str, Any], **overrides: Any) -> AsyncSipauthClient:
        running: RunningServer = await server_factory(ldap=ldap, users_file=None, **overrides)
        client = AsyncSipauthClient(f"127.0.0.1:{running.port}", timeout=10, retries=0)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """One Samba AD DC for the whole session (provisioning takes seconds); stopped at the end."""
    dc = start_samba(tmp_path_factory.mktemp("samba") / "dc")
    try:
        yield dc
    finally:
        dc.stop()
