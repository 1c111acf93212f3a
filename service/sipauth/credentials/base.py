"""What a credential source returns, and the contract every source follows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from ..digest import Algorithm, compute_ha1

__all__ = ["CredentialSource", "Identity", "UserRecord"]

_DERIVED_MAX = 8


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, returned to the proxy on ACCEPT."""

    display_name: str = ""
    sip_uri: str = ""
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One account: its secrets (never printed), identity and state.

    ``ha1`` maps (realm, base algorithm) to a stored HA1 (lower-case hex: sources normalise it); ``password`` is a
    cleartext SIP password from which HA1s are derived for any realm.
    """

    username: str
    ha1: Mapping[tuple[str, Algorithm], str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    password: str | None = field(default=None, repr=False)
    identity: Identity = field(default_factory=Identity)
    #: Why the account may not use the service even with correct credentials
    #: (verdict FORBIDDEN with this reason): ``account_disabled``,
    #: ``account_locked``, ``group_required``. None: it may.
    refusal: str | None = None
    #: HA1s derived from ``password``, kept so that a cached record hashes its password once per
    #: (algorithm, realm, spelling of the username); cleared when it holds _DERIVED_MAX of them.
    _derived: dict[tuple[Algorithm, str, str], str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def ha1_for(self, algorithm: Algorithm, realm: str, username_as_sent: str) -> str | None:
        """The HA1 to verify an answer with ``algorithm`` in ``realm``, or None if there is none.

        A derived HA1 uses the username exactly as the UA sent it, since that
        is what the UA hashed (directories often match names case-insensitively).
        """
        stored = self.ha1.get((realm, algorithm.base))
        if stored is not None:
            return stored
        if self.password is None:
            return None
        key = (algorithm.base, realm, username_as_sent)
        derived = self._derived.get(key)
        if derived is None:
            if len(self._derived) >= _DERIVED_MAX:
                self._derived.clear()  # many spellings of one name: bounded, not a leak
            derived = self._derived[key] = compute_ha1(algorithm, username_as_sent, realm, self.password)
        return derived


class CredentialSource(Protocol):
    """Where HA1s and identities come from (users file, LDAP, a cache in front of either).

    ``lookup`` returns None for an unknown user and raises
    :class:`~sipauth.errors.CredentialsUnavailable` when it cannot tell.
    ``refresh=True`` asks a caching source to bypass its cache once (the
    answer did not match: the password may have changed).
    """

    async def lookup(self, username: str, realm: str, *, refresh: bool = False) -> UserRecord | None:
        """The user's record, or None."""
        ...

    async def ping(self) -> bool:
        """Whether the backing store answers now (for health checks)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
