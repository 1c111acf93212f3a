"""Credentials from a YAML users file: the embedded default and small sites.

::

    users:
      alice:
        password: wonderland          # cleartext SIP password, or:
        ha1:                          # precomputed HA1s (``sipauth ha1``)
          MD5: 3ef5...
          SHA-256: 8f1c...
        realm: example.test           # realm of the HA1s (default: the default realm)
        display_name: Alice Liddell
        sip_uri: sip:alice@example.test
        groups: [staff]
        attributes: {department: wonderland}
        disabled: false
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..digest import Algorithm, userhash
from .base import Identity, UserRecord

__all__ = ["UsersFile", "UsersFileError", "load_users_file"]

_HEX = re.compile(r"[0-9a-fA-F]+")


class UsersFileError(ValueError):
    """The users file cannot be read or does not validate."""


class _User(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    password: str | None = Field(default=None, repr=False)
    ha1: dict[str, str] = Field(default_factory=dict, repr=False)
    realm: str | None = None
    display_name: str = ""
    sip_uri: str = ""
    groups: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(default_factory=dict)
    disabled: bool = False

    @field_validator("ha1")
    @classmethod
    def _check_ha1(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            algorithm = Algorithm.parse(name)
            if algorithm.is_session:
                raise ValueError(f"store HA1 under {algorithm.base.token}, not {algorithm.token}")
            if not _HEX.fullmatch(digest) or len(digest) != algorithm.digest_hex_length:
                raise ValueError(f"HA1 for {name} must be {algorithm.digest_hex_length} hex digits")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: dict[str, _User] = Field(default_factory=dict)


def _record(username: str, user: _User, default_realm: str) -> UserRecord:
    if user.password is None and not user.ha1:
        raise UsersFileError(f"users file: user {username!r} has neither password nor ha1")
    realm = user.realm or default_realm
    return UserRecord(
        username=username,
        ha1=MappingProxyType({(realm, Algorithm.parse(name)): value.lower() for name, value in user.ha1.items()}),
        password=user.password,
        identity=Identity(
            display_name=user.display_name,
            sip_uri=user.sip_uri,
            groups=tuple(user.groups),
            attributes=MappingProxyType(dict(user.attributes)),
        ),
        refusal="account_disabled" if user.disabled else None,
    )


def load_users_file(path: Path, default_realm: str) -> dict[str, UserRecord]:
    """Read and validate a users file; errors name the file and the field, never a secret."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsersFileError(f"users file {path}: {type(exc).__name__}: cannot be read as YAML") from exc
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors(include_input=False)
        )
        raise UsersFileError(f"users file {path}: {problems}") from None
    return {name: _record(name, user, default_realm) for name, user in parsed.users.items()}


class UsersFile:
    """A CredentialSource over a users file held in memory; ``reload`` re-reads it."""

    def __init__(self, path: Path, default_realm: str) -> None:
        self._path = path
        self._default_realm = default_realm
        self._users = load_users_file(path, default_realm)
        self._userhashes: dict[tuple[str, Algorithm], dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._users)

    def reload(self) -> None:
        """Re-read the file; on error the previous users stay in force."""
        self._users = load_users_file(self._path, self._default_realm)
        self._userhashes.clear()

    async def resolve_userhash(self, digest: str, algorithm: Algorithm, realm: str) -> str | None:
        """The user whose H(username ":" realm) is ``digest`` (RFC 7616 section 3.4.4), or None."""
        index = self._userhashes.get((realm, algorithm.base))
        if index is None:
            index = {userhash(algorithm, name, realm): name for name in self._users}
            self._userhashes[(realm, algorithm.base)] = index
        return index.get(digest)

    def peek(self, username: str, realm: str) -> UserRecord | None:
        """The user's record, with no I/O (the file is in memory)."""
        return self._users.get(username)

    async def lookup(self, username: str, realm: str, *, refresh: bool = False) -> UserRecord | None:
        """The user's record (names are case-sensitive, as digest usernames are)."""
        return self._users.get(username)

    async def ping(self) -> bool:
        """A file in memory is always available."""
        return True

    async def close(self) -> None:
        """Nothing to release."""
