"""A real Samba Active Directory DC on 127.0.0.2, provisioned in a temp dir.

Samba's LDAP ports are fixed (389, 636, 3268, 3269, 88, 464), so there is one
DC per loopback address and it needs root; provision it once per test session
(~8 s). Users are created as on real AD: over LDAPS with ``unicodePwd``.
TLS uses Samba's own self-signed CA (``ca_file``); its certificate names
``DC1.example.test`` and has no SAN, so clients check that name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
import pytest

from .procs import require_binary, stop_process, wait_until

__all__ = ["SambaDC", "start_samba"]

HOST = "127.0.0.2"
REALM = "EXAMPLE.TEST"
BASE_DN = "DC=example,DC=test"
SERVER_NAME = "DC1.example.test"
ADMIN_PASSWORD = "Adm1n-Passw0rd!"
_PORTS = (389, 636, 88, 464, 3268, 3269)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def ensure_loopback_address() -> None:
    """Put 127.0.0.2 on lo if it is missing (Samba binds only to addresses an interface has)."""
    shown = subprocess.run(["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False)
    if f"inet {HOST}/" in shown.stdout:
        return
    added = subprocess.run(["ip", "addr", "add", f"{HOST}/8", "dev", "lo"], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        pytest.fail(f"cannot add {HOST} to lo for Samba: {added.stderr.strip()}", pytrace=False)


@dataclass
class SambaDC:
    """One provisioned Samba AD DC; ``start``/``stop`` may be repeated."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        """Samba's self-signed CA (written at first start)."""
        return self.workdir / "private" / "tls" / "ca.pem"

    @property
    def ldaps_url(self) -> str:
        """ldaps:// URL of the DC."""
        return f"ldaps://{HOST}:636"

    @property
    def ldap_url(self) -> str:
        """ldap:// URL of the DC (StartTLS required for simple binds)."""
        return f"ldap://{HOST}:389"

    @property
    def smb_conf(self) -> Path:
        """The DC's smb.conf."""
        return self.workdir / "etc" / "smb.conf"

    def provision(self) -> SambaDC:
        """``samba-tool domain provision`` into ``workdir`` (6-17 s)."""
        tool = require_binary("samba-tool", "samba")
        run = self.workdir / "run"
        options = {
            "interfaces": HOST,
            "bind interfaces only": "yes",
            "server services": "ldap, cldap, kdc",
            "pid directory": str(run),
            "ncalrpc dir": str(run / "ncalrpc"),
            "winbindd socket directory": str(run / "winbindd"),
            "ntp signd socket directory": str(run / "ntp"),
            "log file": str(self.workdir / "log.%m"),
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                tool, "domain", "provision",
                f"--realm={REALM}", "--domain=EXAMPLE", "--server-role=dc", "--dns-backend=NONE",
                "--use-rfc2307", "--host-name=dc1", f"--adminpass={ADMIN_PASSWORD}",
                f"--targetdir={self.workdir}",
                *(f"--option={key}={value}" for key, value in options.items()),
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool domain provision failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return self

    def start(self) -> SambaDC:
        """Start ``samba`` in the foreground and wait for LDAPS."""
        if os.geteuid() != 0:
            pytest.fail("Samba AD tests need root (its LDAP ports are fixed)", pytrace=False)
        binary = require_binary("samba", "samba")
        ensure_loopback_address()
        wait_until(lambda: not any(_port_open(p) for p in _PORTS), 10, f"Samba ports on {HOST} to be free")
        log = (self.workdir / "samba.out").open("ab")
        self.proc = subprocess.Popen(
            [binary, "-F", "--no-process-group", "-M", "single", "-s", str(self.smb_conf), "--debug-stdout"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = (self.workdir / "samba.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"samba exited:\n{tail}")
            return _port_open(636) and self.ca_file.exists()

        wait_until(up, 30, f"Samba LDAPS on {HOST}:636", interval=0.1)
        # LDAPS accepts connections a moment before the directory answers binds.
        wait_until(self._admin_binds, 15, "Samba to accept an administrator bind", interval=0.2)
        return self

    def _admin_binds(self) -> bool:
        try:
            self.admin().unbind()
        except ldap3.core.exceptions.LDAPException:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM, and wait until its ports are free (children exit a little later)."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_port_open(p) for p in _PORTS):
                time.sleep(0.1)

    def tls(self) -> ldap3.Tls:
        """TLS that trusts Samba's CA and checks its certificate name."""
        import ssl

        return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file), valid_names=[SERVER_NAME])

    def admin(self) -> ldap3.Connection:
        """A connection over LDAPS bound as the domain Administrator."""
        server = ldap3.Server(self.ldaps_url, tls=self.tls(), get_info=ldap3.NONE, connect_timeout=3)
        return ldap3.Connection(
            server, f"Administrator@{REALM.lower()}", ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True
        )

    @staticmethod
    def user_dn(name: str) -> str:
        """DN of a user created by :meth:`add_user`."""
        return f"CN={name},CN=Users,{BASE_DN}"

    group_dn = user_dn

    def add_user(
        self,
        name: str,
        password: str,
        *,
        disabled: bool = False,
        attributes: dict[str, Any] | None = None,
    ) -> str:
        """Create a user as on real AD (LDAPS, ``unicodePwd``); return its DN."""
        values: dict[str, Any] = {
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{REALM.lower()}",
            "displayName": name.capitalize(),
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": 514 if disabled else 512,
            **(attributes or {}),
        }
        dn = self.user_dn(name)
        with self.admin() as conn:
            conn.add(dn, ["top", "person", "organizationalPerson", "user"], values)
        return dn

    def add_group(self, name: str, members: Sequence[str]) -> str:
        """Create a global security group with ``members`` (DNs); return its DN."""
        dn = self.group_dn(name)
        with self.admin() as conn:
            conn.add(dn, ["top", "group"], {"sAMAccountName": name, **({"member": list(members)} if members else {})})
        return dn

    def modify(self, dn: str, changes: dict[str, Any]) -> None:
        """Apply ``{attribute: value}`` replacements as the Administrator."""
        with self.admin() as conn:
            conn.modify(dn, {name: [(ldap3.MODIFY_REPLACE, [value])] for name, value in changes.items()})

    def sipauth_settings(self, bind_dn: str, bind_password: str, **overrides: Any) -> dict[str, Any]:
        """The ``ldap:`` settings for sipauth against this DC (LDAPS, Samba's CA, the active_directory preset)."""
        settings: dict[str, Any] = {
            "urls": [self.ldaps_url],
            "ca_file": str(self.ca_file),
            "tls_server_name": SERVER_NAME,
            "bind_dn": bind_dn,
            "bind_password": bind_password,
            "base_dn": BASE_DN,
            "preset": "active_directory",
            "attributes": {"ha1": {"MD5": "info", "SHA-256": "info", "SHA-512-256": "info"}},
            "connect_timeout_seconds": 3,
            "operation_timeout_seconds": 5,
            "pool_size": 2,
        }
        settings.update(overrides)
        return settings


def start_samba(workdir: Path) -> SambaDC:
    """A provisioned and started DC (fails with an install hint when Samba is missing)."""
    require_binary("samba", "samba")
    dc = SambaDC(workdir).provision()
    return dc.start()
