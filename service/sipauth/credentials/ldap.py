r"""Credentials from an LDAP directory or Active Directory, over ldap3.

ldap3 is synchronous: every operation runs in a thread pool as large as the
connection pool, so the event loop never blocks. Each thread takes a bound
connection from the pool; a connection that breaks (server restarted, idle
connection dropped) is replaced by a new one, trying the URLs in order, and
the search is repeated once (a search is safe to repeat). When no URL
answers, :class:`~sipauth.errors.CredentialsUnavailable` is raised: the
caller answers UNAVAILABLE, never a verdict.

Usernames are checked (no control characters, bounded length) before any
search and RFC 4515-escaped into the filter template, so ``*``, ``)(``
or ``\2a`` match only a user literally called that.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from ..digest import Algorithm, UnsupportedAlgorithm
from ..errors import CredentialsUnavailable
from ..metrics import BACKEND_ERRORS, BACKEND_LATENCY
from .base import Identity, UserRecord
from .cache import CachedCredentialSource
from .ldap_presets import LdapProfile, resolve_profile
from .ldap_settings import USERNAME_PLACEHOLDER, LdapSettings

__all__ = [
    "LdapDirectory",
    "LdapEntry",
    "LdapSource",
    "acceptable_username",
    "cached_ldap_source",
    "parse_ha1_values",
    "user_filter",
]

log = logging.getLogger("sipauth.ldap")
T = TypeVar("T")

#: Active Directory: userAccountControl ACCOUNTDISABLE.
_UF_ACCOUNTDISABLE = 0x2
#: LDAP_MATCHING_RULE_IN_CHAIN: membership through any depth of nested groups.
IN_CHAIN = "1.2.840.113556.1.4.1941"
#: A successful operation this recent stands for a ping.
_PING_FRESHNESS = 10.0
_HEX = frozenset("0123456789abcdefABCDEF")


def acceptable_username(username: str, max_length: int) -> bool:
    """Whether ``username`` may be searched for at all (non-empty, bounded, no control characters)."""
    if not username or len(username) > max_length:
        return False
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in username)


def user_filter(template: str, username: str) -> str:
    """``template`` with ``{username}`` replaced by the RFC 4515-escaped name."""
    return template.replace(USERNAME_PLACEHOLDER, escape_filter_chars(username))


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(ch in _HEX for ch in value)


def parse_ha1_values(
    values: list[str], implicit: list[tuple[str, Algorithm]]
) -> Iterator[tuple[tuple[str, Algorithm], str]]:
    """HA1s in one attribute's values: bare hex for its implicit (realm, algorithm) pairs, or ``ALG:REALM:HEX`` lines.

    Lines that do not parse are skipped: a malformed HA1 can only fail to match.
    """
    algorithms = {algorithm for _, algorithm in implicit}
    for value in values:
        for raw_line in value.splitlines():
            line = raw_line.strip()
            if not line:
                continue
            if ":" in line:
                name, _, rest = line.partition(":")
                realm, _, digest = rest.rpartition(":")
                try:
                    algorithm = Algorithm.parse(name).base
                except UnsupportedAlgorithm:
                    continue
                if realm and algorithm in algorithms and _is_hex(digest, algorithm.digest_hex_length):
                    yield (realm, algorithm), digest.lower()
                continue
            for realm, algorithm in implicit:
                if _is_hex(line, algorithm.digest_hex_length):
                    yield (realm, algorithm), line.lower()


@dataclass(frozen=True, slots=True)
class LdapEntry:
    """One user entry as read: its DN and attribute values (names lower-cased, values decoded)."""

    dn: str
    values: Mapping[str, list[str]]

    def first(self, attribute: str | None) -> str:
        """The first value of ``attribute``, or ""."""
        if not attribute:
            return ""
        found = self.values.get(attribute.lower())
        return found[0] if found else ""

    def all(self, attribute: str | None) -> list[str]:
        """Every value of ``attribute``."""
        if not attribute:
            return []
        return list(self.values.get(attribute.lower(), []))


def _decode(raw: Mapping[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in raw.items():
        items = values if isinstance(values, list) else [values]
        decoded = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items]
        out.setdefault(name.lower(), []).extend(decoded)
    return out


def _dn_key(dn: str) -> str:
    """A DN in a form good enough to compare two spellings of it (case and spaces around separators)."""
    return ",".join(part.strip().lower().replace(" =", "=").replace("= ", "=") for part in dn.split(","))


def _group_name(dn: str) -> str:
    first = dn.split(",", 1)[0]
    _, sep, value = first.partition("=")
    return value.strip() if sep else dn


def _describe(exc: Exception) -> str:
    """An ldap3 error for a log line or message: its type and the server's description, never a credential."""
    if isinstance(exc, ldap_exc.LDAPOperationResult):
        return f"{type(exc).__name__} ({exc.description})"
    return type(exc).__name__


_COMMUNICATION = (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPSocketOpenError, ldap_exc.LDAPStartTLSError)
_UNAVAILABLE_RESULTS = (
    ldap_exc.LDAPBusyResult,
    ldap_exc.LDAPUnavailableResult,
    ldap_exc.LDAPUnwillingToPerformResult,
    ldap_exc.LDAPTimeLimitExceededResult,
    ldap_exc.LDAPAdminLimitExceededResult,
    ldap_exc.LDAPOperationsErrorResult,
)


class LdapDirectory:
    """A pool of bound ldap3 connections over one or more URLs (failover in order); synchronous.

    Thread-safe: each call takes a connection from the pool for its duration.
    """

    def __init__(
        self,
        settings: LdapSettings,
        *,
        bind_dn: str,
        bind_password: str,
        pool_size: int,
        read_only: bool = True,
    ) -> None:
        self._settings = settings
        self._bind_dn = bind_dn
        self._bind_password = bind_password
        self._read_only = read_only
        self._tls_config = self._tls()
        self._pool: queue.LifoQueue[ldap3.Connection | None] = queue.LifoQueue()
        for _ in range(pool_size):
            self._pool.put(None)
        self._last_success = 0.0
        self._lock = threading.Lock()
        self.connected_url = ""

    def _tls(self) -> ldap3.Tls:
        settings = self._settings
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
            local_certificate_file=str(settings.client_cert_file) if settings.client_cert_file else None,
            local_private_key_file=str(settings.client_key_file) if settings.client_key_file else None,
            valid_names=[settings.tls_server_name] if settings.tls_server_name else None,
        )

    def _server(self, url: str) -> ldap3.Server:
        # get_info=NONE: no schema or root DSE reads behind our back (they are searches too).
        return ldap3.Server(
            url,
            tls=self._tls_config,
            get_info=ldap3.NONE,
            connect_timeout=self._settings.connect_timeout_seconds,
        )

    def _open(self, server: ldap3.Server) -> ldap3.Connection:
        conn = ldap3.Connection(
            server,
            user=self._bind_dn,
            password=self._bind_password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            client_strategy=ldap3.SYNC,
            read_only=self._read_only,
            # ldap3 packs it into SO_RCVTIMEO as whole seconds.
            receive_timeout=max(1, math.ceil(self._settings.operation_timeout_seconds)),
            auto_referrals=False,
            raise_exceptions=True,
            return_empty_attributes=False,
        )
        try:
            conn.open()
            if not server.ssl and self._settings.start_tls:
                conn.start_tls()
            conn.bind()
        except BaseException:
            self.discard(conn)
            raise
        return conn

    def connect(self) -> ldap3.Connection:
        """A new bound connection to the first URL that answers; CredentialsUnavailable if none does."""
        problems: list[str] = []
        for index, url in enumerate(self._settings.urls):
            # A fresh Server each time: ldap3 remembers addresses that failed and skips them for a while.
            server = self._server(url)
            try:
                conn = self._open(server)
            except ldap_exc.LDAPException as exc:
                problems.append(f"{server.name}: {_describe(exc)}")
                continue
            except OSError as exc:
                problems.append(f"{server.name}: {type(exc).__name__}")
                continue
            if index > 0:
                log.warning("LDAP failover", extra={"url": server.name, "problems": problems})
            self.connected_url = server.name
            return conn
        log.error("no LDAP server answered", extra={"problems": problems})
        raise CredentialsUnavailable("no LDAP server answered: " + "; ".join(problems))

    @staticmethod
    def discard(conn: ldap3.Connection | None) -> None:
        """Unbind ``conn``, ignoring errors (it may be broken already)."""
        if conn is None:
            return
        with suppress(ldap_exc.LDAPException, OSError):
            conn.unbind()

    @contextmanager
    def _connection(self) -> Iterator[list[ldap3.Connection | None]]:
        slot: list[ldap3.Connection | None] = [self._pool.get()]
        try:
            yield slot
        finally:
            self._pool.put(slot[0])

    def run(self, operation: Callable[[ldap3.Connection], T]) -> T:
        """Run ``operation`` on a pooled connection; reconnect and repeat it once if the connection broke."""
        with self._connection() as slot:
            for attempt in (1, 2):
                if slot[0] is None or slot[0].closed:
                    self.discard(slot[0])
                    slot[0] = None
                    slot[0] = self.connect()
                try:
                    result = operation(slot[0])
                except _COMMUNICATION as exc:
                    self.discard(slot[0])
                    slot[0] = None
                    if attempt == 2:
                        raise CredentialsUnavailable(f"LDAP connection lost: {_describe(exc)}") from None
                    log.info("LDAP connection lost, reconnecting", extra={"error": _describe(exc)})
                    continue
                except _UNAVAILABLE_RESULTS as exc:
                    raise CredentialsUnavailable(f"LDAP cannot answer: {_describe(exc)}") from None
                with self._lock:
                    self._last_success = time.monotonic()
                return result
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        """Whether the directory answers: a recent success, else a read of the root DSE."""
        with self._lock:
            if time.monotonic() - self._last_success < _PING_FRESHNESS:
                return True
        try:
            self.read(lambda conn: conn.search("", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["1.1"]))
        except CredentialsUnavailable:
            return False
        return True

    def close(self) -> None:
        """Unbind every pooled connection."""
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                return
            self.discard(conn)

    def read(self, operation: Callable[[ldap3.Connection], T]) -> T:
        """:meth:`run` for a lookup: any other directory error also means the directory cannot answer.

        (Writes use :meth:`run`, whose callers need the directory's own result.)
        """
        try:
            return self.run(operation)
        except ldap_exc.LDAPException as exc:
            raise CredentialsUnavailable(f"LDAP cannot answer: {_describe(exc)}") from None

    def find_user(self, profile: LdapProfile, username: str, attributes: list[str]) -> LdapEntry | None:
        """The single entry matching ``username``, or None (no entry, or ambiguous)."""
        search_filter = user_filter(profile.user_filter, username)
        timeout = self._settings.operation_timeout_seconds

        def search(conn: ldap3.Connection) -> list[dict[str, Any]]:
            try:
                conn.search(
                    self._settings.base_dn,
                    search_filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=attributes or ["1.1"],
                    size_limit=2,
                    time_limit=max(1, int(timeout)),
                )
            except ldap_exc.LDAPSizeLimitExceededResult:
                return [{}, {}]
            return [r for r in conn.response or [] if r.get("type") == "searchResEntry"]

        entries = self.read(search)
        if len(entries) != 1:
            if len(entries) > 1:
                log.warning("LDAP filter matches several entries: none is used", extra={"filter_template": True})
            return None
        entry = entries[0]
        return LdapEntry(dn=str(entry["dn"]), values=MappingProxyType(_decode(entry.get("raw_attributes", {}))))

    def in_group_nested(self, user_dn: str, group_dn: str) -> bool:
        """Whether ``user_dn`` belongs to ``group_dn`` through any chain of groups (Active Directory)."""
        search_filter = f"(memberOf:{IN_CHAIN}:={escape_filter_chars(group_dn)})"

        def search(conn: ldap3.Connection) -> bool:
            conn.search(user_dn, search_filter, search_scope=ldap3.BASE, attributes=["1.1"])
            return any(r.get("type") == "searchResEntry" for r in conn.response or [])

        return self.read(search)


class LdapSource:
    """A CredentialSource over an LDAP directory or Active Directory (put a cache in front of it)."""

    def __init__(self, settings: LdapSettings, default_realm: str) -> None:
        self.settings = settings
        self.profile = resolve_profile(settings)
        self.default_realm = default_realm
        self._attributes = self.profile.attribute_names()
        self._ha1_attributes = self.profile.ha1_attributes(default_realm)
        self._required_group = settings.required_group
        if settings.uses_plain_ldap():
            log.warning("ldap.start_tls is off: the bind password crosses the network in the clear")
        self.directory = LdapDirectory(
            settings,
            bind_dn=settings.bind_dn,
            bind_password=settings.resolved_bind_password(),
            pool_size=settings.pool_size,
        )
        self._executor = ThreadPoolExecutor(max_workers=settings.pool_size, thread_name_prefix="sipauth-ldap")

    async def _call(self, function: Callable[[], T], operation: str = "search") -> T:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except CredentialsUnavailable:
            BACKEND_ERRORS.labels("ldap", operation).inc()
            raise
        finally:
            BACKEND_LATENCY.labels("ldap", operation).observe(time.perf_counter() - started)

    async def lookup(self, username: str, realm: str, *, refresh: bool = False) -> UserRecord | None:
        """The user's record from the directory (every call searches: cache it)."""
        if not acceptable_username(username, self.settings.max_username_length):
            return None
        return await self._call(lambda: self.lookup_sync(username))

    def lookup_sync(self, username: str) -> UserRecord | None:
        """The blocking lookup (for the thread pool and the ``sipauth ldap`` commands)."""
        if not acceptable_username(username, self.settings.max_username_length):
            return None
        entry = self.directory.find_user(self.profile, username, self._attributes)
        if entry is None:
            return None
        return self.record(username, entry)

    def member_of_required_group(self, entry: LdapEntry) -> bool:
        """Whether the entry's user is in ``required_group`` (directly, or nested when enabled)."""
        group = self._required_group
        if group is None:
            return True
        wanted = _dn_key(group)
        if any(_dn_key(dn) == wanted for dn in entry.all(self.profile.groups)):
            return True
        return self.profile.nested_groups and self.directory.in_group_nested(entry.dn, group)

    def ha1s(self, entry: LdapEntry) -> dict[tuple[str, Algorithm], str]:
        """Every usable HA1 the entry holds, by (realm, base algorithm)."""
        found: dict[tuple[str, Algorithm], str] = {}
        for attribute, implicit in self._ha1_attributes.items():
            for key, digest in parse_ha1_values(entry.all(attribute), implicit):
                found.setdefault(key, digest)
        return found

    def refusal(self, entry: LdapEntry) -> str | None:
        """Why correct credentials would still be refused, or None."""
        if self.profile.ad_account_state:
            control = entry.first("userAccountControl")
            if control.lstrip("-").isdigit() and int(control) & _UF_ACCOUNTDISABLE:
                return "account_disabled"
            lockout = entry.first("lockoutTime")
            if lockout.isdigit() and int(lockout) > 0:
                return "account_locked"
        if not self.member_of_required_group(entry):
            return "group_required"
        return None

    def record(self, username: str, entry: LdapEntry) -> UserRecord:
        """The UserRecord of a found entry."""
        profile = self.profile
        password = (entry.first(profile.password) or None) if profile.password else None
        extra = {name: ", ".join(entry.all(attribute)) for name, attribute in profile.extra.items()}
        return UserRecord(
            username=username,
            ha1=MappingProxyType(self.ha1s(entry)),
            password=password,
            identity=Identity(
                display_name=entry.first(profile.display_name),
                sip_uri=entry.first(profile.sip_uri),
                groups=tuple(_group_name(dn) for dn in entry.all(profile.groups)),
                attributes=MappingProxyType({k: v for k, v in extra.items() if v}),
            ),
            refusal=self.refusal(entry),
        )

    async def ping(self) -> bool:
        """Whether the directory answers (a bound connection and a recent or fresh read)."""
        return await self._call(self.directory.ping, "ping")

    async def close(self) -> None:
        """Unbind the pool and stop the threads."""
        await self._call(self.directory.close, "close")
        self._executor.shutdown(wait=False)


def cached_ldap_source(settings: LdapSettings, default_realm: str) -> CachedCredentialSource:
    """An LdapSource behind the cache its settings describe; ValueError on unusable settings."""
    cache = settings.cache
    return CachedCredentialSource(
        LdapSource(settings, default_realm),
        positive_ttl=cache.positive_ttl_seconds,
        negative_ttl=cache.negative_ttl_seconds,
        max_entries=cache.max_entries,
        serve_stale=cache.serve_stale,
        stale_max_age=cache.stale_max_age_seconds,
        refresh_min_interval=cache.refresh_min_interval_seconds,
        retry_after=cache.retry_after_seconds,
    )
