"""Which proxy certificates may call sipauth: an allowlist of client identities. No I/O, no gRPC.

An entry is one of:

- ``CN=<name>``: the certificate's subject common name, compared exactly;
- a URI subject alternative name (anything with a ``:``), compared exactly,
  e.g. ``spiffe://cluster.local/ns/sip/sa/kamailio``;
- a DNS subject alternative name, compared without regard to case; a leading
  ``*.`` stands for exactly one label (RFC 6125 §6.4.3), so ``*.sip.svc``
  allows ``kamailio.sip.svc`` but neither ``sip.svc`` nor ``a.b.sip.svc``.

Each kind only matches its own kind of name: a DNS entry never matches a URI
SAN or a common name that happens to read the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ClientAllowlist", "PeerNames"]

_CN_PREFIX = "CN="
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True)
class PeerNames:
    """The names a verified client certificate carries."""

    dns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    common_name: str = ""

    def identity(self) -> str:
        """The name that best identifies the peer: a URI SAN, else a DNS SAN, else ``CN=...``; '' when none."""
        if self.uris:
            return self.uris[0]
        if self.dns:
            return self.dns[0]
        return f"{_CN_PREFIX}{self.common_name}" if self.common_name else ""


def _dns_labels(name: str) -> list[str] | None:
    """The lower-cased labels of a DNS name, or None when it is not one (no wildcard allowed)."""
    labels = name.lower().rstrip(".").split(".")
    return labels if all(_LABEL.match(label) for label in labels) else None


class ClientAllowlist:
    """Parsed allowlist entries; an empty list allows any certificate the client CA signed."""

    def __init__(self, entries: Iterable[str]) -> None:
        """Parse ``entries``; raise ValueError naming the first malformed one."""
        self.entries = tuple(entries)
        self._common_names: set[str] = set()
        self._uris: set[str] = set()
        self._dns: set[str] = set()
        self._wildcards: set[str] = set()
        for entry in self.entries:
            self._add(entry)

    def _add(self, entry: str) -> None:
        if entry != entry.strip() or not entry:
            raise ValueError(f"allowed_clients: {entry!r} is empty or has surrounding spaces")
        if entry.startswith(_CN_PREFIX):
            if len(entry) == len(_CN_PREFIX):
                raise ValueError(f"allowed_clients: {entry!r} names no common name")
            self._common_names.add(entry[len(_CN_PREFIX) :])
        elif ":" in entry:
            self._uris.add(entry)
        elif entry.startswith("*."):
            labels = _dns_labels(entry[2:])
            if labels is None or len(labels) < 2:
                raise ValueError(f"allowed_clients: {entry!r} must be *. followed by a domain of two labels or more")
            self._wildcards.add(".".join(labels))
        else:
            labels = _dns_labels(entry)
            if labels is None:
                raise ValueError(
                    f"allowed_clients: {entry!r} is not a DNS name, a URI, or CN=<common name> "
                    "(a wildcard is allowed only as a leading *.)"
                )
            self._dns.add(".".join(labels))

    def match(self, peer: PeerNames) -> str | None:
        """The peer's name that the allowlist admits (URI, then DNS, then ``CN=...``), or None."""
        for uri in peer.uris:
            if uri in self._uris:
                return uri
        for name in peer.dns:
            labels = _dns_labels(name)
            if labels is None:
                continue
            if ".".join(labels) in self._dns or (len(labels) > 1 and ".".join(labels[1:]) in self._wildcards):
                return name
        if peer.common_name and peer.common_name in self._common_names:
            return f"{_CN_PREFIX}{peer.common_name}"
        return None

    def admit(self, peer: PeerNames) -> str | None:
        """The caller identity to record when ``peer`` may call (maybe ''), else None."""
        if not self.entries:
            return peer.identity()
        return self.match(peer)
