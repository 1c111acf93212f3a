"""Typed settings: a YAML file plus ``SIPAUTH_*`` environment overrides, validated once at start.

Precedence: built-in defaults < settings file < environment. Environment
names are ``SIPAUTH_`` + the path in upper case with ``__`` between levels
(``SIPAUTH_REDIS__URL``, ``SIPAUTH_POLICY__NONCE_TTL_SECONDS``); a few have
short aliases (``SIPAUTH_LISTEN``, ``SIPAUTH_REDIS_URL``,
``SIPAUTH_NONCE_KEYS_FILE``, ``SIPAUTH_USERS_FILE``). Values that start with
``[`` or ``{`` are read as YAML (lists, maps). Relative paths in a file are
relative to that file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .client_allowlist import ClientAllowlist
from .credentials.ldap_settings import LdapSettings
from .digest import Algorithm
from .errors import ConfigError, read_secret_file
from .lockout import LockoutPolicy
from .policy import QOP_VALUES, RealmPolicy
from .replay import ReplayMode

__all__ = [
    "ConfigError",
    "PolicySettings",
    "RedisSettings",
    "Settings",
    "TlsSettings",
    "format_listen",
    "is_loopback",
    "load_settings",
    "parse_listen",
]

ENV_PREFIX = "SIPAUTH_"
CONFIG_ENV = "SIPAUTH_CONFIG"
_ALIASES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("redis", "url"),
}
_MIN_KEY_LENGTH = 32


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; port 0 asks the OS for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"listen must be host:port, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


def format_listen(host: str, port: int) -> str:
    """The inverse of :func:`parse_listen`: ``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (from :func:`parse_listen`) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySettings(_Strict):
    """What a realm offers and accepts. Every field can be overridden per realm."""

    algorithms: list[str] = Field(default_factory=lambda: ["SHA-256", "MD5"])
    qop: list[str] = Field(default_factory=lambda: ["auth"])
    allow_qop_less: bool = False
    nonce_ttl_seconds: int = Field(default=300, gt=0, le=86400)
    bind_source_ip: bool = False
    bind_call_id: bool = False
    replay_mode: Literal["nc", "one-time"] = "nc"
    verify_uri: bool = True
    userhash: bool = False

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm must be offered")
        for name in value:
            Algorithm.parse(name)
        return value

    @field_validator("qop")
    @classmethod
    def _known_qop(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in QOP_VALUES:
                raise ValueError(f"qop must be among {', '.join(QOP_VALUES)}")
        return value

    def to_policy(self, realm: str) -> RealmPolicy:
        """Resolve into the authenticator's frozen policy."""
        return RealmPolicy(
            realm=realm,
            algorithms=tuple(Algorithm.parse(name) for name in self.algorithms),
            qop=tuple(self.qop),
            allow_qop_less=self.allow_qop_less,
            nonce_ttl=self.nonce_ttl_seconds,
            bind_source_ip=self.bind_source_ip,
            bind_call_id=self.bind_call_id,
            replay_mode=ReplayMode(self.replay_mode),
            verify_uri=self.verify_uri,
            userhash=self.userhash,
        )


class RedisSettings(_Strict):
    """The shared replay store. Nothing configured (no url, sentinels or nodes): an in-memory guard (one process only).

    ``mode`` picks how Redis is reached: ``standalone`` (``url``), ``sentinel``
    (``sentinels`` + ``master_name``) or ``cluster`` (``nodes``, some seed
    nodes). The password may be given inline, in ``password_file`` or in
    ``SIPAUTH_REDIS__PASSWORD``; it is never logged.
    """

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    #: standalone: ``redis://[user@]host:port/db``, ``rediss://`` for TLS, or ``unix://``.
    url: str | None = None
    #: sentinel: ``host:port`` of each Sentinel, and the master name they watch.
    sentinels: list[str] = Field(default_factory=list)
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    #: cluster: ``host:port`` of a few nodes; the rest of the cluster is discovered from them.
    nodes: list[str] = Field(default_factory=list)
    #: sentinel: the database number (standalone puts it in the URL; a cluster has only 0).
    db: int = Field(default=0, ge=0, le=15)
    #: ACL user (Redis 6+); empty: the default user.
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    #: TLS for sentinel and cluster modes (standalone: use ``rediss://``).
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Bound on each replay check (socket, connect and queueing included); keep it well inside the RPC deadline.
    timeout_ms: int = Field(default=250, gt=0, le=10_000)
    #: Connections per Redis node, and the most replay checks in flight at once.
    max_connections: int = Field(default=64, gt=0, le=10_000)
    #: Redis unreachable: ``fail_closed`` answers UNAVAILABLE; ``local_fallback`` decides from this replica's memory.
    failure_policy: Literal["fail_closed", "local_fallback"] = "fail_closed"
    #: A fresh use counts once this many replicas acknowledged it (WAIT); 0: no wait. Not for cluster mode.
    wait_replicas: int = Field(default=0, ge=0, le=16)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("sentinels", "nodes")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            _host, port = parse_listen(address)
            if port == 0:
                raise ValueError("each address needs a port")
        return value

    @model_validator(mode="after")
    def _mode_fields(self) -> RedisSettings:
        if self.mode == "standalone" and (self.sentinels or self.nodes or self.master_name):
            raise ValueError("sentinels, master_name and nodes need mode sentinel or cluster")
        if self.mode == "sentinel" and (not self.sentinels or not self.master_name):
            raise ValueError("mode sentinel needs sentinels and master_name")
        if self.mode == "cluster" and not self.nodes:
            raise ValueError("mode cluster needs nodes (a few host:port seeds)")
        if self.mode != "standalone" and (self.url is not None):
            raise ValueError("url is for mode standalone; use sentinels or nodes")
        if self.mode == "standalone" and self.tls:
            raise ValueError("tls is for modes sentinel and cluster; in mode standalone use a rediss:// url")
        if self.mode == "cluster" and self.wait_replicas:
            raise ValueError("wait_replicas is for standalone and sentinel modes")
        if self.wait_replicas and self.failure_policy == "local_fallback":
            # A use the replicas did not acknowledge is UNAVAILABLE by design; falling back to
            # memory would turn it into an ACCEPT that no other replica knows of.
            raise ValueError("wait_replicas needs failure_policy fail_closed")
        if self.mode == "cluster" and self.db != 0:
            raise ValueError("a Redis Cluster has only database 0")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def enabled(self) -> bool:
        """Whether a Redis is configured (else replay state stays in this process's memory)."""
        return self.url is not None or bool(self.sentinels) or bool(self.nodes)

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when that is how it is given."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        return read_secret_file(self.password_file, "redis.password_file")


class TlsSettings(_Strict):
    """TLS on the gRPC port; with ``client_ca_file``, mutual TLS: proxies must show a certificate it signed.

    The files are looked at again every ``reload_interval_seconds`` (on the
    next handshake after that) and reloaded when one changed, so a rotated
    Kubernetes Secret takes effect without a restart.
    """

    #: Server certificate chain (PEM), leaf first.
    cert_file: Path
    #: Its private key (PEM, unencrypted).
    key_file: Path
    #: CA certificates (PEM) that sign the proxies' certificates; set: client certificates are required.
    client_ca_file: Path | None = None
    #: Client identities allowed to call: DNS SANs (exact or ``*.`` wildcard), URI SANs, or ``CN=<name>``.
    #: Empty: any certificate signed by ``client_ca_file``.
    allowed_clients: list[str] = Field(default_factory=list)
    #: How often the files are checked for changes; 0: on every new connection.
    reload_interval_seconds: float = Field(default=10.0, ge=0, le=86400)

    @field_validator("allowed_clients")
    @classmethod
    def _allowlist(cls, value: list[str]) -> list[str]:
        ClientAllowlist(value)
        return value

    @model_validator(mode="after")
    def _allowlist_needs_ca(self) -> TlsSettings:
        if self.allowed_clients and self.client_ca_file is None:
            raise ValueError("allowed_clients needs client_ca_file: without it no client certificate is asked for")
        return self


class LockoutSettings(_Strict):
    """Brute-force protection (counters in Redis when configured, else in memory)."""

    enabled: bool = True
    #: Wrong answers for one user from one IP within the window that lock that pair.
    threshold: int = Field(default=5, ge=1, le=10_000)
    #: Wrong answers from one IP, all users together, within the window that lock the IP.
    ip_threshold: int = Field(default=30, ge=1, le=1_000_000)
    #: Lock a user whatever the source after this many failures; 0 = off (it lets anyone lock a victim out).
    user_threshold: int = Field(default=0, ge=0, le=1_000_000)
    window_seconds: float = Field(default=300, gt=0, le=86400)
    #: First lock length; each further lock of the same scope doubles it, up to max_lock_seconds.
    base_lock_seconds: float = Field(default=30, gt=0, le=86400)
    max_lock_seconds: float = Field(default=3600, gt=0, le=7 * 86400)
    #: Networks never locked (CIDR), e.g. the proxies' own health checks.
    trusted_networks: list[str] = Field(default_factory=list)

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    def to_policy(self) -> LockoutPolicy:
        """Resolve into the lockout's frozen policy."""
        return LockoutPolicy(
            enabled=self.enabled,
            threshold=self.threshold,
            ip_threshold=self.ip_threshold,
            user_threshold=self.user_threshold,
            window=self.window_seconds,
            base_lock=self.base_lock_seconds,
            max_lock=max(self.max_lock_seconds, self.base_lock_seconds),
            trusted_networks=tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_networks),
        )


class MetricsSettings(_Strict):
    """Prometheus endpoint."""

    #: host:port of the /metrics HTTP endpoint; None = no endpoint.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class Settings(_Strict):
    """Everything sipauth reads at start."""

    listen: str = "127.0.0.1:50051"
    default_realm: str = "example.test"
    #: Defaults for every realm.
    policy: PolicySettings = Field(default_factory=PolicySettings)
    #: Realms served besides the default one, each with optional overrides of ``policy``.
    realms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: File with one secret (>= 32 characters) per line: the first mints, all verify.
    nonce_keys_file: Path | None = None
    redis: RedisSettings = Field(default_factory=RedisSettings)
    memory_replay_max_entries: int = Field(default=500_000, gt=0)
    users_file: Path | None = None
    #: LDAP / Active Directory; when set it is used instead of ``users_file``.
    ldap: LdapSettings | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Also write the audit trail (one JSON line per decision) to this file, e.g. for fail2ban.
    audit_file: Path | None = None
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    #: Server processes sharing the port (SO_REUSEPORT); 0 = one per CPU the container may use
    #: (the cgroup CPU limit), or 1 without Redis, whose in-memory replay state is per process.
    workers: int = Field(default=0, ge=0, le=256)
    #: Run worker i on CPU i of the process's CPU set (one CPU each, its gRPC threads included).
    #: For dedicated cores only (bare metal, or Kubernetes' static CPU manager with integer CPU
    #: requests): on shared CPUs it makes workers compete with whatever else runs there.
    pin_workers: bool = False
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    max_header_length: int = Field(default=8192, ge=256, le=65536)
    max_body_bytes: int = Field(default=1 << 20, ge=0, le=16 << 20)
    #: TLS (and mutual TLS) on ``listen``; unset: plaintext, allowed on loopback only unless ``allow_plaintext``.
    tls: TlsSettings | None = None
    #: Serve plaintext gRPC on a non-loopback ``listen`` (e.g. behind a mesh that does the TLS).
    allow_plaintext: bool = False
    #: host:port of a second, plaintext port serving only grpc.health.v1 (for Kubernetes gRPC probes).
    health_listen: str | None = None
    #: host:port of the proxies' port: the AuthService (Exchange, IssueChallenge, VerifyResponse) on a
    #: lean HTTP/2 server, at a fraction of the main port's CPU per call; same TLS as ``listen``.
    proxy_listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("health_listen", "proxy_listen")
    @classmethod
    def _other_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        host, port = parse_listen(self.listen)
        if self.tls is None and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(
                f"listen: {self.listen} is not a loopback address and no tls section is configured; "
                "configure tls (cert_file, key_file, client_ca_file) or set allow_plaintext: true"
            )
        if self.health_listen is not None and port != 0 and parse_listen(self.health_listen) == (host, port):
            raise ValueError("health_listen: must differ from listen")
        if self.proxy_listen is not None:
            proxy_host, proxy_port = parse_listen(self.proxy_listen)
            if self.tls is None and not self.allow_plaintext and not is_loopback(proxy_host):
                raise ValueError(
                    f"proxy_listen: {self.proxy_listen} is not a loopback address and no tls section is configured; "
                    "configure tls or set allow_plaintext: true"
                )
            others = [(host, port)] + ([parse_listen(self.health_listen)] if self.health_listen else [])
            if proxy_port != 0 and (proxy_host, proxy_port) in others:
                raise ValueError("proxy_listen: must differ from listen and health_listen")
        return self

    @field_validator("default_realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        if not value or any(ch in value for ch in '"\\\r\n\x00'):
            raise ValueError("must be non-empty and hold no quote, backslash or control character")
        return value

    @model_validator(mode="after")
    def _realm_policies(self) -> Settings:
        for realm in self.realms:
            self._realm(realm)
            self.policy_for(realm)
        return self

    def policy_for(self, realm: str) -> RealmPolicy:
        """The default policy with the realm's overrides applied."""
        overrides = self.realms.get(realm) or {}
        merged = PolicySettings.model_validate({**self.policy.model_dump(), **overrides})
        return merged.to_policy(realm)

    def policies(self) -> dict[str, RealmPolicy]:
        """Every served realm's policy, the default realm included."""
        return {realm: self.policy_for(realm) for realm in {self.default_realm, *self.realms}}

    def nonce_secrets(self) -> list[bytes] | None:
        """Secrets from ``nonce_keys_file``, or None when no file is configured."""
        if self.nonce_keys_file is None:
            return None
        try:
            lines = self.nonce_keys_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"nonce_keys_file: cannot read {self.nonce_keys_file}: {exc.strerror}") from None
        secrets = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not secrets:
            raise ConfigError(f"nonce_keys_file: {self.nonce_keys_file} holds no key")
        for number, secret in enumerate(secrets, 1):
            if len(secret) < _MIN_KEY_LENGTH:
                raise ConfigError(f"nonce_keys_file: key #{number} is shorter than {_MIN_KEY_LENGTH} characters")
        if len(set(secrets)) != len(secrets):
            raise ConfigError("nonce_keys_file: the same key is listed twice")
        return [secret.encode("utf-8") for secret in secrets]


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :]
        path = _ALIASES.get(key) or tuple(part.lower() for part in key.split("__"))
        value: Any = yaml.safe_load(raw) if raw.lstrip().startswith(("[", "{")) else raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another SIPAUTH_ variable")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: Settings that name files, by section ("" = top level): relative paths are relative to the settings file.
_FILE_SETTINGS: dict[str, tuple[str, ...]] = {
    "": ("users_file", "nonce_keys_file", "audit_file"),
    "redis": ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"),
    "tls": ("cert_file", "key_file", "client_ca_file"),
    "ldap": ("bind_password_file", "ca_file", "client_cert_file", "client_key_file"),
}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section, keys in _FILE_SETTINGS.items():
        node = data if not section else data.get(section)
        if not isinstance(node, dict):
            continue
        for key in keys:
            value = node.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                node[key] = str(base / value)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (``path`` or ``$SIPAUTH_CONFIG``) and the environment; raise ConfigError if invalid."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"settings file {path} must hold a mapping")
        data = dict(loaded or {})
        _resolve_paths(data, path.resolve().parent)
    env = _env_overrides(environ)
    _resolve_paths(env, Path.cwd())
    data = _merge(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_describe(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
