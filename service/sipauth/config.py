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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .digest import Algorithm
from .policy import QOP_VALUES, RealmPolicy
from .replay import ReplayMode

__all__ = ["ConfigError", "PolicySettings", "RedisSettings", "Settings", "load_settings", "parse_listen"]

ENV_PREFIX = "SIPAUTH_"
CONFIG_ENV = "SIPAUTH_CONFIG"
_ALIASES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("redis", "url"),
}
_MIN_KEY_LENGTH = 32


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the field (never a secret value)."""


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
        )


class RedisSettings(_Strict):
    """The shared replay store. No URL: an in-memory guard (one process only)."""

    url: str | None = None
    timeout_ms: int = Field(default=250, gt=0, le=10_000)
    max_connections: int = Field(default=64, gt=0, le=10_000)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    max_header_length: int = Field(default=8192, ge=256, le=65536)
    max_body_bytes: int = Field(default=1 << 20, ge=0, le=16 << 20)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

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


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for key in ("users_file", "nonce_keys_file"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[key] = str(base / value)


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
