"""sipauth against a real Samba Active Directory DC: verdicts, nested groups, TLS, and the ldap commands."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml

from sipauth.cli import main
from sipauth_client import auth_pb2
from tests.ldap.conftest import login
from tests.support.samba import BASE_DN, SambaDC
from tests.support.slapd import ad_info_value

pytestmark = pytest.mark.ad

ACCEPT, REJECT, FORBIDDEN = auth_pb2.VERDICT_ACCEPT, auth_pb2.VERDICT_REJECT, auth_pb2.VERDICT_FORBIDDEN
SERVICE = "svc-sipauth"
SERVICE_PASSWORD = "Svc-Passw0rd-1!"
#: Windows logon passwords; the SIP passwords are separate (the HA1 in ``info`` is made from those).
LOGON = "Logon-Passw0rd-1!"
SIP = {"alice": "alice-sip", "dave": "dave-sip", "erin": "erin-sip", "frank": "frank-sip", "grace": "grace-sip"}


@dataclass(frozen=True)
class Directory:
    """The DC with its test users, and how sipauth reaches it."""

    dc: SambaDC
    required_group: str

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """``ldap:`` settings binding as the service account, requiring the group."""
        settings = self.dc.sipauth_settings(f"{SERVICE}@example.test", SERVICE_PASSWORD)
        return {**settings, "required_group": self.required_group, **overrides}


@pytest.fixture(scope="module")
def directory(samba_dc: SambaDC) -> Directory:
    """AD users: alice in sip-users, dave via a nested group, erin outside, frank disabled, grace without HA1."""
    dc = samba_dc

    def info(name: str) -> dict[str, str]:
        return {"info": ad_info_value(name, SIP[name])}

    dc.add_user(SERVICE, SERVICE_PASSWORD)
    alice = dc.add_user("alice", LOGON, attributes={**info("alice"), "mail": "alice@example.test"})
    dave = dc.add_user("dave", LOGON, attributes=info("dave"))
    dc.add_user("erin", LOGON, attributes=info("erin"))
    frank = dc.add_user("frank", LOGON, disabled=True, attributes=info("frank"))
    grace = dc.add_user("grace", LOGON)
    nested = dc.add_group("sip-nested", [dave])
    group = dc.add_group("sip-users", [alice, nested, frank, grace])
    return Directory(dc, group)


async def test_verdicts_over_ldaps(directory: Directory, sipauth_ldap: Callable[..., Any]) -> None:
    """Over LDAPS: ACCEPT (direct and nested group), REJECT, FORBIDDEN for outside the group and for disabled."""
    client = await sipauth_ldap(directory.settings())
    alice = await login(client, "alice", SIP["alice"])
    assert alice.verdict == ACCEPT
    assert alice.identity.display_name == "Alice"
    assert "sip-users" in alice.identity.groups
    assert alice.identity.attributes["mail"] == "alice@example.test"
    assert (await login(client, "alice", LOGON)).verdict == REJECT
    assert (await login(client, "dave", SIP["dave"], "MD5")).verdict == ACCEPT
    erin = await login(client, "erin", SIP["erin"])
    assert (erin.verdict, erin.reason) == (FORBIDDEN, "group_required")
    frank = await login(client, "frank", SIP["frank"])
    assert (frank.verdict, frank.reason) == (FORBIDDEN, "account_disabled")
    assert (await login(client, "grace", SIP["grace"])).verdict == REJECT
    assert (await login(client, "*", SIP["alice"])).verdict == REJECT


async def test_starttls_verified_against_samba_ca(directory: Directory, sipauth_ldap: Callable[..., Any]) -> None:
    """ldap:// + StartTLS with Samba's CA: ACCEPT."""
    client = await sipauth_ldap(directory.settings(urls=[directory.dc.ldap_url], start_tls=True))
    assert (await login(client, "alice", SIP["alice"])).verdict == ACCEPT


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
async def test_tls_with_another_ca_is_unavailable(
    directory: Directory, sipauth_ldap: Callable[..., Any], transport: str, tmp_path: Path
) -> None:
    """A CA that did not sign Samba's certificate (or a wrong name) fails with UNAVAILABLE, never a verdict."""
    url = directory.dc.ldaps_url if transport == "ldaps" else directory.dc.ldap_url
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    for overrides in ({"ca_file": str(other_ca)}, {"tls_server_name": "other.example.test"}):
        client = await sipauth_ldap(directory.settings(urls=[url], **overrides))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await login(client, "alice", SIP["alice"])
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Run:
    """What one ``sipauth`` command did."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def sipauth_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run the ``sipauth`` command line in this process, with ``stdin`` as its standard input (not a terminal)."""

    def run(*args: str, stdin: str = "") -> Run:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


async def test_set_ha1_then_login(
    directory: Directory, sipauth_ldap: Callable[..., Any], sipauth_command: Callable[..., Run], tmp_path: Path
) -> None:
    """``sipauth ldap set-ha1`` writes grace's HA1s as the Administrator; ``check`` then finds them; she ACCEPTs."""
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"default_realm": "example.test", "ldap": directory.settings()}))
    admin_password = tmp_path / "admin-password"
    admin_password.write_text("Adm1n-Passw0rd!\n")

    before = sipauth_command("ldap", "check", "--config", str(config), "--user", "grace")
    assert before.returncode == 1, before.stderr
    assert "HA1 attribute info: absent" in before.stdout

    written = sipauth_command(
        "ldap", "set-ha1", "--config", str(config), "--user", "grace",
        "--bind-dn", "Administrator@example.test", "--bind-password-file", str(admin_password),
        stdin=SIP["grace"] + "\n",
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert f"CN=grace,CN=Users,{BASE_DN}: info <- HA1 MD5 for example.test" in written.stdout

    after = sipauth_command("ldap", "check", "--config", str(config), "--user", "grace")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "LDAPS" in after.stdout
    assert "result: ready" in after.stdout
    for output in (before, written, after):
        assert SIP["grace"] not in output.stdout + output.stderr
        assert SERVICE_PASSWORD not in output.stdout + output.stderr

    client = await sipauth_ldap(directory.settings(), policy={"algorithms": ["SHA-256", "SHA-512-256", "MD5"]})
    for algorithm in ("MD5", "SHA-256", "SHA-512-256"):
        assert (await login(client, "grace", SIP["grace"], algorithm)).verdict == ACCEPT


def test_set_ha1_refused_to_the_read_only_service_account(
    directory: Directory, sipauth_command: Callable[..., Run], tmp_path: Path
) -> None:
    """The service account may not write HA1s: set-ha1 with it fails with AD's refusal, and prints no secret."""
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"default_realm": "example.test", "ldap": directory.settings()}))
    result = sipauth_command("ldap", "set-ha1", "--config", str(config), "--user", "erin", stdin="whatever\n")
    assert result.returncode == 1
    assert "cannot write info" in result.stderr
    assert "insufficientAccessRights" in result.stderr
    assert SERVICE_PASSWORD not in result.stdout + result.stderr


async def test_wrong_bind_password_is_unavailable(directory: Directory, sipauth_ldap: Callable[..., Any]) -> None:
    """A service account that cannot bind makes the RPC UNAVAILABLE, and the error names no password."""
    settings = directory.settings(bind_password="not-the-password")
    client = await sipauth_ldap(settings)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await login(client, "alice", SIP["alice"])
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not-the-password" not in (raised.value.details() or "")
