"""What ``sipauth ldap check`` and ``sipauth ldap set-ha1`` do (blocking; run from the command line).

Neither prints a secret: ``check`` says which mapped attributes are present,
``set-ha1`` says which attributes it wrote for which realms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

import ldap3

from ..digest import Algorithm, compute_ha1
from ..errors import CredentialsUnavailable
from .ldap import LdapDirectory, LdapEntry, LdapSource, acceptable_username, parse_ha1_values
from .ldap_settings import LdapSettings

__all__ = ["LdapCommandError", "check_user", "ha1_changes", "set_ha1"]


class LdapCommandError(Exception):
    """The command cannot do what was asked; the message says why (never with a secret)."""


def _transport(settings: LdapSettings, url: str) -> str:
    if url.lower().startswith("ldaps://"):
        return "LDAPS"
    return "StartTLS" if settings.start_tls else "no TLS"


def _find(source: LdapSource, directory: LdapDirectory, username: str) -> LdapEntry:
    if not acceptable_username(username, source.settings.max_username_length):
        raise LdapCommandError("the username is empty, too long or holds control characters")
    try:
        entry = directory.find_user(source.profile, username, source.profile.attribute_names())
    except CredentialsUnavailable as exc:
        raise LdapCommandError(str(exc)) from None
    if entry is None:
        raise LdapCommandError(
            f"user {username!r}: no single entry under {source.settings.base_dn} matches {source.profile.user_filter}"
        )
    return entry


def check_user(source: LdapSource, username: str, out: TextIO) -> bool:
    """Connect, bind, find the user and list the mapped attributes present; True if the user can log in."""
    directory = source.directory
    try:
        conn = directory.connect()
    except CredentialsUnavailable as exc:
        raise LdapCommandError(str(exc)) from None
    directory.discard(conn)  # the check only proves that a bind works
    url = directory.connected_url
    out.write(f"connected to {url} ({_transport(source.settings, url)}), bound as {source.settings.bind_dn}\n")
    entry = _find(source, directory, username)
    profile = source.profile
    out.write(f"user {username!r}: {entry.dn}\n")
    ha1s = source.ha1s(entry)
    for attribute, pairs in profile.ha1_attributes(source.default_realm).items():
        values = entry.all(attribute)
        found = sorted({f"{algorithm.token} for {realm}" for (realm, algorithm), _ in parse_ha1_values(values, pairs)})
        state = f"present: {', '.join(found)}" if found else ("present but no usable HA1" if values else "absent")
        out.write(f"  HA1 attribute {attribute}: {state}\n")
    if profile.password:
        state = "present" if entry.first(profile.password) else "absent"
        out.write(f"  SIP password attribute {profile.password}: {state}\n")
    for label, shown in (("display name", profile.display_name), ("SIP URI", profile.sip_uri)):
        if shown:
            value = entry.first(shown)
            out.write(f"  {label} ({shown}): {value!r}\n" if value else f"  {label} ({shown}): absent\n")
    if profile.groups:
        out.write(f"  groups ({profile.groups}): {len(entry.all(profile.groups))} direct\n")
    for name, attribute in profile.extra.items():
        out.write(f"  {name} ({attribute}): {'present' if entry.all(attribute) else 'absent'}\n")
    refusal = source.refusal(entry)
    has_secret = bool(ha1s) or bool(profile.password and entry.first(profile.password))
    if not has_secret:
        out.write("result: no HA1 or SIP password is readable: logins will be rejected\n")
    elif refusal is not None:
        out.write(f"result: credentials found, but logins get FORBIDDEN ({refusal})\n")
    else:
        out.write("result: ready\n")
    return has_secret and refusal is None


def ha1_changes(
    source: LdapSource, username: str, password: str, realms: Sequence[str]
) -> dict[str, tuple[str, list[str]]]:
    """Attribute -> (its new value, what it holds), for the mapped HA1 attributes and ``realms``.

    An attribute holding one HA1 of the default realm (or of the realm it is
    mapped for) gets bare hex; one holding several gets ``ALGORITHM:REALM:HEX`` lines.
    """
    profile = source.profile
    planned: dict[str, list[tuple[str, Algorithm, bool]]] = {}
    for realm in realms:
        per_realm = profile.ha1_by_realm.get(realm, {})
        for algorithm, attribute in per_realm.items():
            planned.setdefault(attribute, []).append((realm, algorithm, True))
        for algorithm, attribute in profile.ha1.items():
            if algorithm not in per_realm:
                planned.setdefault(attribute, []).append((realm, algorithm, realm == source.default_realm))
    if not planned:
        raise LdapCommandError("the mapping names no HA1 attribute (attributes.ha1) to write")
    changes: dict[str, tuple[str, list[str]]] = {}
    for attribute, items in planned.items():
        described = [f"{algorithm.token} for {realm}" for realm, algorithm, _ in items]
        if len(items) == 1 and items[0][2]:
            realm, algorithm, _ = items[0]
            changes[attribute] = (compute_ha1(algorithm, username, realm, password), described)
        else:
            lines = [f"{a.token}:{r}:{compute_ha1(a, username, r, password)}" for r, a, _ in items]
            changes[attribute] = ("\n".join(lines), described)
    return changes


def set_ha1(
    source: LdapSource,
    writer: LdapDirectory,
    username: str,
    password: str,
    *,
    realms: Sequence[str],
    out: TextIO,
) -> None:
    """Compute the user's HA1s for ``realms`` and write them with ``writer`` (an account that may write them)."""
    entry = _find(source, writer, username)
    changes = ha1_changes(source, username, password, realms)
    modification = {attribute: [(ldap3.MODIFY_REPLACE, [value])] for attribute, (value, _) in changes.items()}
    try:
        writer.run(lambda conn: conn.modify(entry.dn, modification))
    except ldap3.core.exceptions.LDAPOperationResult as exc:
        raise LdapCommandError(f"cannot write {', '.join(changes)} of {entry.dn}: {exc.description}") from None
    except CredentialsUnavailable as exc:
        raise LdapCommandError(str(exc)) from None
    for attribute, (_, described) in changes.items():
        out.write(f"{entry.dn}: {attribute} <- HA1 {', '.join(described)}\n")
