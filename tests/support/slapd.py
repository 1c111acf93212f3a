"""A real OpenLDAP slapd on free loopback ports, in a temp dir, with SIP users in it.

Two flavours:

- ``openldap``: inetOrgPerson + the sipauth schema (``examples/ldap/sipauth.ldif``)
  + the H.350.4 SIPIdentity schema (``examples/ldap/h350-sipidentity.ldif``), with
  the memberof overlay; each user carries HA1s (openldap preset) and a
  SIPIdentityPassword (h350 preset).
- ``ad``: an Active Directory look-alike (sAMAccountName, userPrincipalName,
  userAccountControl, lockoutTime, memberOf, objectCategory, info) whose ``info``
  attribute holds the HA1s, as a site would map it on real AD.

In both, ACLs let only the service account (``SERVICE_DN``) read the SIP secrets.
Usage from any test module::

    server = start_slapd(tmp_path / "ldap", [LdapUser("alice", "wonderland")])
    settings = server.sipauth_settings("openldap")     # the ``ldap:`` section for sipauth
    ...
    server.stop()

slapd runs with ``-d stats``: :meth:`SlapdServer.searches` counts the searches it
served, from its own log.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ldap3
import trustme

from sipauth.digest import Algorithm, compute_ha1

from .procs import free_port, require_binary, stop_process, wait_until

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE_DN",
    "READER_DN",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "LdapUser",
    "SlapdServer",
    "start_slapd",
]

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "examples" / "ldap"
BASE_DN = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=sipauth,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-secret"
#: An ordinary authenticated account: may read the directory, but not SIP secrets.
READER_DN = f"cn=reader,ou=services,{BASE_DN}"
READER_PASSWORD = "reader-secret"
REALM = "example.test"
_ALGORITHMS = (Algorithm.MD5, Algorithm.SHA_256, Algorithm.SHA_512_256)
_HA1_ATTRIBUTES = {
    Algorithm.MD5: "sipauthHA1MD5",
    Algorithm.SHA_256: "sipauthHA1SHA256",
    Algorithm.SHA_512_256: "sipauthHA1SHA512256",
}

# An Active Directory look-alike: AD's OIDs and names, with the matching rules slapd needs
# (``info`` comes from the cosine schema, as the same free-text attribute).
_AD_SCHEMA = """\
dn: cn=ad-lookalike,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: ad-lookalike
olcAttributeTypes: ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.662 NAME 'lockoutTime'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.2.102 NAME 'memberOf'
  EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
olcAttributeTypes: ( 1.2.840.113556.1.4.782 NAME 'objectCategory'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.2.141 NAME 'department'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcObjectClasses: ( 1.2.840.113556.1.5.9 NAME 'user' SUP inetOrgPerson STRUCTURAL
  MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ lockoutTime $
        memberOf $ objectCategory $ info $ department ) )
"""


def ssha(password: str) -> str:
    """An RFC 2307 {SSHA} userPassword value (slapd stores what it is given)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class LdapUser:
    """A user to put in the directory; ``password`` is the SIP password."""

    name: str
    password: str
    display_name: str = ""
    #: CNs of groups (created under ou=groups when missing).
    groups: Sequence[str] = ()
    #: ad flavour: userAccountControl 514 instead of 512.
    disabled: bool = False
    #: ad flavour: lockoutTime > 0.
    locked: bool = False
    mail: str = ""

    @property
    def sip_uri(self) -> str:
        """sip:name@realm (the user part percent-encoded, as RFC 3261 wants it)."""
        return f"sip:{quote(self.name, safe='-_.!~*()')}@{REALM}"


def ha1_values(username: str, password: str, realm: str = REALM) -> dict[Algorithm, str]:
    """HA1 of every base algorithm."""
    return {algorithm: compute_ha1(algorithm, username, realm, password) for algorithm in _ALGORITHMS}


def ad_info_value(username: str, password: str, realm: str = REALM) -> str:
    """The ``info`` value holding every HA1, tagged ``ALGORITHM:REALM:HEX`` one per line."""
    return "\n".join(f"{a.token}:{realm}:{h}" for a, h in ha1_values(username, password, realm).items())


@dataclass
class SlapdServer:
    """One slapd; ``start``/``stop`` may be repeated (same ports, same data)."""

    workdir: Path
    flavour: str = "openldap"
    port: int = field(default_factory=free_port)
    ldaps_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        """ldap:// URL (StartTLS available)."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """ldaps:// URL."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def log_path(self) -> Path:
        """slapd's stats log."""
        return self.workdir / "slapd.log"

    # -- lifecycle ----------------------------------------------------------

    def _write_tls(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tls = self.workdir / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        self.ca_file = tls / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
        cert.private_key_pem.write_to_path(str(tls / "key.pem"))

    def _protected(self) -> str:
        if self.flavour == "ad":
            return "info"
        return ",".join([*_HA1_ATTRIBUTES.values(), "SIPIdentityPassword"])

    def _config(self) -> str:
        tls = self.workdir / "tls"
        if self.flavour == "ad":
            schemas = ["core", "cosine", "inetorgperson"]
            extra_includes = [self.workdir / "ad-lookalike.ldif"]
            modules = ["back_mdb"]
        else:
            schemas = ["core", "cosine", "inetorgperson"]
            extra_includes = [SCHEMAS / "sipauth.ldif", SCHEMAS / "h350-sipidentity.ldif"]
            modules = ["back_mdb", "memberof"]
        includes = [f"file:///etc/ldap/schema/{name}.ldif" for name in schemas]
        includes += [f"file://{path}" for path in extra_includes]
        lines = [
            "dn: cn=config",
            "objectClass: olcGlobal",
            "cn: config",
            f"olcPidFile: {self.workdir}/slapd.pid",
            f"olcTLSCACertificateFile: {tls}/ca.pem",
            f"olcTLSCertificateFile: {tls}/cert.pem",
            f"olcTLSCertificateKeyFile: {tls}/key.pem",
            "olcLogLevel: stats",
            "",
            "dn: cn=module{0},cn=config",
            "objectClass: olcModuleList",
            "cn: module{0}",
            "olcModulePath: /usr/lib/ldap",
            *(f"olcModuleLoad: {name}" for name in modules),
            "",
            "dn: cn=schema,cn=config",
            "objectClass: olcSchemaConfig",
            "cn: schema",
            "",
            *(f"include: {include}\n" for include in includes),
            "dn: olcDatabase={-1}frontend,cn=config",
            "objectClass: olcDatabaseConfig",
            "objectClass: olcFrontendConfig",
            "olcDatabase: {-1}frontend",
            "olcSizeLimit: 500",
            "",
            "dn: olcDatabase={0}config,cn=config",
            "objectClass: olcDatabaseConfig",
            "olcDatabase: {0}config",
            "olcAccess: {0}to * by * none",
            "",
            "dn: olcDatabase={1}mdb,cn=config",
            "objectClass: olcDatabaseConfig",
            "objectClass: olcMdbConfig",
            "olcDatabase: {1}mdb",
            f"olcSuffix: {BASE_DN}",
            f"olcRootDN: {ADMIN_DN}",
            f"olcRootPW: {ssha(ADMIN_PASSWORD)}",
            f"olcDbDirectory: {self.workdir}/data",
            "olcDbMaxSize: 104857600",
            "olcDbIndex: objectClass eq",
            "olcAccess: {0}to attrs=userPassword by self write by anonymous auth by * none",
            f'olcAccess: {{1}}to attrs={self._protected()} by dn.exact="{SERVICE_DN}" read by * none',
            "olcAccess: {2}to * by users read by * none",
            "",
        ]
        if self.flavour != "ad":
            lines += [
                "dn: olcOverlay={0}memberof,olcDatabase={1}mdb,cn=config",
                "objectClass: olcOverlayConfig",
                "objectClass: olcMemberOf",
                "olcOverlay: {0}memberof",
                "olcMemberOfRefInt: TRUE",
                "",
            ]
        return "\n".join(lines)

    def configure(self) -> SlapdServer:
        """Write TLS material and cn=config (offline, with slapadd)."""
        slapadd = require_binary("slapadd", "slapd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        (self.workdir / "slapd.d").mkdir(exist_ok=True)
        self._write_tls()
        if self.flavour == "ad":
            (self.workdir / "ad-lookalike.ldif").write_text(_AD_SCHEMA)
        config = self.workdir / "config.ldif"
        config.write_text(self._config())
        result = subprocess.run(
            [slapadd, "-n0", "-F", str(self.workdir / "slapd.d"), "-l", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed:\n{result.stderr}")
        return self

    def start(self) -> SlapdServer:
        """Start slapd in the foreground (its pid is ours) and wait until it binds."""
        binary = require_binary("slapd", "slapd")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                binary, "-d", "stats",
                "-F", str(self.workdir / "slapd.d"),
                "-h", f"{self.url}/ {self.ldaps_url}/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("slapd exited:\n" + self.log_path.read_text(errors="replace")[-3000:])
            conn = ldap3.Connection(ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=1))
            try:
                return bool(conn.bind())
            except ldap3.core.exceptions.LDAPException:
                return False
            finally:
                conn.unbind()

        wait_until(up, 10, f"slapd on port {self.port}")
        return self

    def stop(self) -> None:
        """Stop slapd (SIGTERM)."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    # -- data ---------------------------------------------------------------

    def admin(self) -> ldap3.Connection:
        """A connection bound as the root DN (writes anything)."""
        server = ldap3.Server(self.url, get_info=ldap3.NONE)
        return ldap3.Connection(server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True)

    def user_dn(self, name: str) -> str:
        """The DN of user ``name``."""
        return f"uid={name},ou=people,{BASE_DN}"

    def group_dn(self, name: str) -> str:
        """The DN of group ``name``."""
        return f"cn={name},ou=groups,{BASE_DN}"

    def populate(self, users: Iterable[LdapUser]) -> SlapdServer:
        """Create the tree, the service accounts, the users and their groups."""
        with self.admin() as conn:
            conn.add(BASE_DN, ["top", "dcObject", "organization"], {"o": "Example", "dc": "example"})
            for ou in ("people", "groups", "services"):
                conn.add(f"ou={ou},{BASE_DN}", ["top", "organizationalUnit"], {"ou": ou})
            for dn, password in ((SERVICE_DN, SERVICE_PASSWORD), (READER_DN, READER_PASSWORD)):
                conn.add(
                    dn,
                    ["top", "person"],
                    {"cn": dn.split(",")[0][3:], "sn": "service", "userPassword": ssha(password)},
                )
            for user in users:
                self._add_user(conn, user)
        return self

    def _add_user(self, conn: ldap3.Connection, user: LdapUser) -> None:
        attributes: dict[str, Any] = {
            "uid": user.name,
            "cn": user.display_name or user.name,
            "sn": user.name,
            "displayName": user.display_name or user.name,
            "userPassword": ssha(user.password),
        }
        if user.mail:
            attributes["mail"] = user.mail
        if self.flavour == "ad":
            classes = ["top", "person", "organizationalPerson", "inetOrgPerson", "user"]
            attributes |= {
                "sAMAccountName": user.name,
                "userPrincipalName": f"{user.name}@{REALM}",
                "objectCategory": "person",
                "userAccountControl": 514 if user.disabled else 512,
                "lockoutTime": 133000000000000000 if user.locked else 0,
                "info": ad_info_value(user.name, user.password),
            }
            if user.groups:
                attributes["memberOf"] = [self.group_dn(g) for g in user.groups]
        else:
            classes = ["top", "person", "organizationalPerson", "inetOrgPerson", "sipauthAccount", "SIPIdentity"]
            attributes |= {
                "SIPIdentityUserName": user.name,
                "SIPIdentityPassword": user.password.encode(),
                "SIPIdentitySIPURI": user.sip_uri,
                "sipauthSIPURI": user.sip_uri,
            }
            for algorithm, value in ha1_values(user.name, user.password).items():
                attributes[_HA1_ATTRIBUTES[algorithm]] = value
        conn.add(self.user_dn(user.name), classes, attributes)
        if self.flavour != "ad":
            for group in user.groups:
                self._add_to_group(conn, group, self.user_dn(user.name))

    def _add_to_group(self, conn: ldap3.Connection, group: str, member_dn: str) -> None:
        dn = self.group_dn(group)
        if self._exists(conn, dn):
            conn.modify(dn, {"member": [(ldap3.MODIFY_ADD, [member_dn])]})
        else:
            conn.add(dn, ["top", "groupOfNames"], {"cn": group, "member": [member_dn]})

    @staticmethod
    def _exists(conn: ldap3.Connection, dn: str) -> bool:
        try:
            return bool(conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["1.1"]))
        except ldap3.core.exceptions.LDAPNoSuchObjectResult:
            return False

    def add_user(self, user: LdapUser) -> None:
        """Add one more user (the server must be running)."""
        with self.admin() as conn:
            self._add_user(conn, user)

    def set_password(self, name: str, password: str) -> None:
        """Change a user's SIP password: every stored form of it (HA1s, H.350 password, AD info)."""
        changes: dict[str, Any]
        if self.flavour == "ad":
            changes = {"info": [(ldap3.MODIFY_REPLACE, [ad_info_value(name, password)])]}
        else:
            changes = {_HA1_ATTRIBUTES[a]: [(ldap3.MODIFY_REPLACE, [v])] for a, v in ha1_values(name, password).items()}
            changes["SIPIdentityPassword"] = [(ldap3.MODIFY_REPLACE, [password.encode()])]
        with self.admin() as conn:
            conn.modify(self.user_dn(name), changes)

    # -- what sipauth needs -------------------------------------------------

    def sipauth_settings(self, preset: str = "openldap", **overrides: Any) -> dict[str, Any]:
        """The ``ldap:`` settings for sipauth against this server (plain LDAP unless overridden)."""
        settings: dict[str, Any] = {
            "urls": [self.url],
            "start_tls": False,
            "ca_file": str(self.ca_file),
            "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PASSWORD,
            "base_dn": BASE_DN,
            "preset": preset,
            "connect_timeout_seconds": 1,
            "operation_timeout_seconds": 2,
            "pool_size": 2,
        }
        if self.flavour == "ad":
            settings["attributes"] = {"ha1": {"MD5": "info", "SHA-256": "info", "SHA-512-256": "info"}}
        settings.update(overrides)
        return settings

    def searches(self, containing: str = "") -> int:
        """How many searches slapd has logged so far (``containing``: only those whose line holds it)."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in re.findall(r"^.* SRCH base=.*$", text, re.MULTILINE) if containing in line)

    def wait_for_log(self, timeout: float = 2.0) -> None:
        """Let slapd flush its log (it writes lines as it serves them)."""
        deadline = time.monotonic() + timeout
        size = -1
        while time.monotonic() < deadline:
            current = self.log_path.stat().st_size
            if current == size:
                return
            size = current
            time.sleep(0.05)


def start_slapd(workdir: Path, users: Iterable[LdapUser], flavour: str = "openldap") -> SlapdServer:
    """A configured, started and populated slapd (``flavour``: ``openldap`` or ``ad``)."""
    server = SlapdServer(workdir, flavour=flavour).configure().start()
    try:
        server.populate(users)
    except BaseException:
        server.stop()
        raise
    return server
