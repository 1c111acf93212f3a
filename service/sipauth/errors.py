"""Domain errors raised outside the digest engine, each mapped once at the gRPC boundary."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "CredentialsUnavailable",
    "InvalidRequest",
    "ReplayStoreUnavailable",
    "SipauthError",
    "read_secret_file",
]


class SipauthError(Exception):
    """Base of the service's own errors. Messages never carry secrets."""


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the field (never a secret value)."""


def read_secret_file(path: Path, field: str) -> str:
    """The secret in ``path`` (a mounted Kubernetes Secret), without its final line break.

    ConfigError naming ``field`` when it cannot be read or is empty; the value is never in a message.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{field}: {path} is empty")
    return secret


class InvalidRequest(SipauthError):
    """The proxy sent a request that cannot be answered (missing method, unknown realm...).

    Mapped to INVALID_ARGUMENT: it is a fault of the caller, not a verdict on credentials.
    """


class BackendUnavailable(SipauthError):
    """A backend needed for the decision did not answer in time. Mapped to UNAVAILABLE."""


class ReplayStoreUnavailable(BackendUnavailable):
    """The replay store (Redis) is unreachable or timed out; no ACCEPT can be given."""


class CredentialsUnavailable(BackendUnavailable):
    """The credential source (LDAP / Active Directory) is unreachable and nothing is cached."""
