"""The ``ldap:`` section of the settings: directory, TLS, bind account, mapping, cache.

Every mapping field left unset takes the value of the chosen ``preset``
(:mod:`sipauth.credentials.ldap_presets`). The bind password comes from
``bind_password_file`` (a mounted Kubernetes Secret) or from the environment
variable ``SIPAUTH_LDAP__BIND_PASSWORD``; it is never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..digest import Algorithm
from ..errors import read_secret_file

__all__ = ["LdapAttributeSettings", "LdapCacheSettings", "LdapSettings", "PresetName"]

PresetName = Literal["active_directory", "openldap", "h350"]
#: Placeholder of the username in ``user_filter``; the name is RFC 4515-escaped before it is put there.
USERNAME_PLACEHOLDER = "{username}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ha1_map(value: dict[str, str]) -> dict[str, str]:
    for name, attribute in value.items():
        algorithm = Algorithm.parse(name)
        if algorithm.is_session:
            raise ValueError(f"map HA1s under {algorithm.base.token}, not {algorithm.token}")
        if not attribute:
            raise ValueError(f"the attribute for {name} is empty")
    return value


class LdapAttributeSettings(_Strict):
    """Which LDAP attribute holds what. Unset fields take the preset's value; ``""`` unmaps one."""

    #: Base algorithm (MD5, SHA-256, SHA-512-256) -> attribute holding that HA1 for the default realm.
    #: A value may also be tagged ``ALGORITHM:REALM:HEX`` (one per line) to hold HA1s for several realms.
    ha1: dict[str, str] | None = None
    #: Realm -> {algorithm -> attribute}: HA1 attributes that belong to one other realm.
    ha1_by_realm: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: Attribute with a cleartext SIP password (opt-in: HA1s are derived from it for any realm).
    password: str | None = None
    display_name: str | None = None
    sip_uri: str | None = None
    #: Attribute listing the DNs of the user's groups (``memberOf``).
    groups: str | None = None
    #: Name in ``identity.attributes`` -> LDAP attribute.
    extra: dict[str, str] | None = None

    @field_validator("ha1")
    @classmethod
    def _ha1(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _check_ha1_map(value)

    @field_validator("ha1_by_realm")
    @classmethod
    def _ha1_by_realm(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for mapping in value.values():
            _check_ha1_map(mapping)
        return value


class LdapCacheSettings(_Strict):
    """The cache in front of the directory (see :class:`sipauth.credentials.cache.CachedCredentialSource`)."""

    positive_ttl_seconds: float = Field(default=300.0, ge=0, le=86400)
    negative_ttl_seconds: float = Field(default=30.0, ge=0, le=86400)
    max_entries: int = Field(default=100_000, gt=0)
    #: While the directory is down, answer from cached entries up to this old.
    serve_stale: bool = True
    stale_max_age_seconds: float = Field(default=3600.0, ge=0, le=7 * 86400)
    #: A mismatching answer re-reads the user only if the cached copy is at least this old.
    refresh_min_interval_seconds: float = Field(default=5.0, ge=0, le=3600)
    #: After the directory failed, lookups wait this long before trying it again (and are served stale meanwhile).
    retry_after_seconds: float = Field(default=1.0, ge=0, le=300)


class LdapSettings(_Strict):
    """An LDAP directory or Active Directory as the credential source (replaces ``users_file``)."""

    #: Tried in order: the first that connects and binds serves (``ldap://`` or ``ldaps://``).
    urls: list[str] = Field(min_length=1)
    #: Upgrade ``ldap://`` URLs with StartTLS. Turning it off sends the bind password in the clear.
    start_tls: bool = True
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    #: Name to check in the server certificate when it differs from the URL's host.
    tls_server_name: str | None = None
    bind_dn: str
    bind_password: SecretStr | None = None
    bind_password_file: Path | None = None
    base_dn: str
    preset: PresetName = "openldap"
    #: Search filter; ``{username}`` is replaced by the RFC 4515-escaped name.
    user_filter: str | None = None
    attributes: LdapAttributeSettings = Field(default_factory=LdapAttributeSettings)
    #: DN of a group the user must belong to (nested membership counts with Active Directory).
    required_group: str | None = None
    #: Resolve nested groups with LDAP_MATCHING_RULE_IN_CHAIN (Active Directory only).
    nested_groups: bool | None = None
    connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    operation_timeout_seconds: float = Field(default=3.0, gt=0, le=120)
    #: Connections to the directory, and threads running ldap3 (it is synchronous).
    pool_size: int = Field(default=4, gt=0, le=64)
    #: Longer names are refused before any search.
    max_username_length: int = Field(default=256, gt=0, le=1024)
    cache: LdapCacheSettings = Field(default_factory=LdapCacheSettings)

    @field_validator("urls")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.lower().startswith(("ldap://", "ldaps://")):
                raise ValueError("each URL must start with ldap:// or ldaps://")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if USERNAME_PLACEHOLDER not in value:
            raise ValueError(f"must contain {USERNAME_PLACEHOLDER}")
        depth = 0
        for char in value:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                break
        if depth != 0 or not value.startswith("("):
            raise ValueError("must be one parenthesised LDAP filter")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> LdapSettings:
        if self.bind_password is not None and self.bind_password_file is not None:
            raise ValueError("give bind_password or bind_password_file, not both")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self

    def resolved_bind_password(self) -> str:
        """The bind password, read from ``bind_password_file`` when given that way."""
        if self.bind_password is not None:
            return self.bind_password.get_secret_value()
        if self.bind_password_file is None:
            raise ValueError(
                "ldap: no bind password: set bind_password_file or the environment variable SIPAUTH_LDAP__BIND_PASSWORD"
            )
        return read_secret_file(self.bind_password_file, "ldap.bind_password_file")

    def uses_plain_ldap(self) -> bool:
        """Whether some URL would carry the bind in the clear."""
        return not self.start_tls and any(url.lower().startswith("ldap://") for url in self.urls)
