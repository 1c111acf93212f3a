"""Domain errors raised outside the digest engine, each mapped once at the gRPC boundary."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "CredentialsUnavailable", "InvalidRequest", "ReplayStoreUnavailable", "SipauthError"]


class SipauthError(Exception):
    """Base of the service's own errors. Messages never carry secrets."""


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
