"""Presets for common directories, and the resolved mapping an LDAP source works with.

- ``active_directory``: users found by ``sAMAccountName`` or ``userPrincipalName``;
  ``userAccountControl`` bit 2 (ACCOUNTDISABLE) and ``lockoutTime`` > 0 give
  FORBIDDEN; groups from ``memberOf``, nested ones resolved with
  LDAP_MATCHING_RULE_IN_CHAIN. AD has no standard HA1 attribute: the operator
  names one (see docs/active-directory.md).
- ``openldap``: ``inetOrgPerson`` found by ``uid``; HA1s in the attributes of
  the ``sipauthAccount`` schema shipped in ``examples/ldap/sipauth.ldif``.
- ``h350``: ITU-T H.350.4 / RFC 3944 ``SIPIdentity``: ``SIPIdentityUserName``,
  ``SIPIdentityPassword`` (a SIP password: choosing this preset opts in to
  reading it), ``SIPIdentitySIPURI``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..digest import Algorithm
from .ldap_settings import LdapSettings, PresetName

__all__ = ["PRESETS", "LdapProfile", "resolve_profile"]


@dataclass(frozen=True, slots=True)
class LdapProfile:
    """Where everything is in one directory: the preset with the operator's overrides applied."""

    user_filter: str
    ha1: Mapping[Algorithm, str] = field(default_factory=lambda: MappingProxyType({}))
    ha1_by_realm: Mapping[str, Mapping[Algorithm, str]] = field(default_factory=lambda: MappingProxyType({}))
    password: str | None = None
    display_name: str | None = None
    sip_uri: str | None = None
    groups: str | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Read ``userAccountControl`` and ``lockoutTime`` (Active Directory account state).
    ad_account_state: bool = False
    nested_groups: bool = False

    def attribute_names(self) -> list[str]:
        """Every attribute a lookup asks for."""
        names: list[str] = [*self.ha1.values()]
        for mapping in self.ha1_by_realm.values():
            names.extend(mapping.values())
        names.extend(n for n in (self.password, self.display_name, self.sip_uri, self.groups) if n)
        names.extend(self.extra.values())
        if self.ad_account_state:
            names += ["userAccountControl", "lockoutTime"]
        seen: dict[str, str] = {}
        for name in names:
            seen.setdefault(name.lower(), name)
        return list(seen.values())

    def ha1_attributes(self, default_realm: str) -> dict[str, list[tuple[str, Algorithm]]]:
        """Attribute -> the (realm, algorithm) pairs it holds bare HA1s for."""
        out: dict[str, list[tuple[str, Algorithm]]] = {}
        for algorithm, attribute in self.ha1.items():
            out.setdefault(attribute, []).append((default_realm, algorithm))
        for realm, mapping in self.ha1_by_realm.items():
            for algorithm, attribute in mapping.items():
                out.setdefault(attribute, []).append((realm, algorithm))
        return out


_AD_FILTER = "(&(objectCategory=person)(objectClass=user)(|(sAMAccountName={username})(userPrincipalName={username})))"

PRESETS: Mapping[PresetName, LdapProfile] = MappingProxyType(
    {
        "active_directory": LdapProfile(
            user_filter=_AD_FILTER,
            display_name="displayName",
            sip_uri=None,
            groups="memberOf",
            extra=MappingProxyType({"mail": "mail", "department": "department"}),
            ad_account_state=True,
            nested_groups=True,
        ),
        "openldap": LdapProfile(
            user_filter="(&(objectClass=inetOrgPerson)(uid={username}))",
            ha1=MappingProxyType(
                {
                    Algorithm.MD5: "sipauthHA1MD5",
                    Algorithm.SHA_256: "sipauthHA1SHA256",
                    Algorithm.SHA_512_256: "sipauthHA1SHA512256",
                }
            ),
            display_name="displayName",
            sip_uri="sipauthSIPURI",
            groups="memberOf",
            extra=MappingProxyType({"mail": "mail"}),
        ),
        "h350": LdapProfile(
            user_filter="(&(objectClass=SIPIdentity)(SIPIdentityUserName={username}))",
            password="SIPIdentityPassword",  # noqa: S106 - an attribute name, not a secret
            display_name="displayName",
            sip_uri="SIPIdentitySIPURI",
            groups="memberOf",
        ),
    }
)


def _ha1_map(mapping: Mapping[str, str]) -> Mapping[Algorithm, str]:
    return MappingProxyType({Algorithm.parse(name).base: attr for name, attr in mapping.items() if attr})


def _pick(override: str | None, preset: str | None) -> str | None:
    if override is None:
        return preset
    return override or None


def resolve_profile(settings: LdapSettings) -> LdapProfile:
    """The preset of ``settings`` with its explicit fields applied; ValueError if nothing gives an HA1."""
    preset = PRESETS[settings.preset]
    attrs = settings.attributes
    profile = LdapProfile(
        user_filter=settings.user_filter or preset.user_filter,
        ha1=preset.ha1 if attrs.ha1 is None else _ha1_map(attrs.ha1),
        ha1_by_realm=MappingProxyType({realm: _ha1_map(m) for realm, m in attrs.ha1_by_realm.items()}),
        password=_pick(attrs.password, preset.password),
        display_name=_pick(attrs.display_name, preset.display_name),
        sip_uri=_pick(attrs.sip_uri, preset.sip_uri),
        groups=_pick(attrs.groups, preset.groups),
        extra=preset.extra if attrs.extra is None else MappingProxyType({k: v for k, v in attrs.extra.items() if v}),
        ad_account_state=preset.ad_account_state,
        nested_groups=preset.nested_groups if settings.nested_groups is None else settings.nested_groups,
    )
    if not profile.ha1 and not profile.ha1_by_realm and profile.password is None:
        raise ValueError(
            f"ldap.attributes: the {settings.preset} preset has no standard HA1 attribute: "
            "map one under attributes.ha1 (or a SIP password under attributes.password)"
        )
    if settings.required_group and not profile.groups:
        raise ValueError("ldap.required_group needs attributes.groups (the attribute listing group DNs)")
    return profile
