"""Per-realm policy: what is offered and what is accepted in one realm."""

from __future__ import annotations

from dataclasses import dataclass

from .digest import Algorithm
from .nonce import NonceBinding
from .replay import ReplayMode

__all__ = ["QOP_VALUES", "RealmPolicy"]

#: The qop values RFC 7616 defines.
QOP_VALUES = ("auth", "auth-int")


@dataclass(frozen=True, slots=True)
class RealmPolicy:
    """Everything the authenticator needs to know about one realm, resolved at start."""

    realm: str
    #: Offered in this order; answers with any other algorithm are refused (RFC 8760 section 3).
    algorithms: tuple[Algorithm, ...] = (Algorithm.SHA_256, Algorithm.MD5)
    #: qop values offered; answers must use one of them.
    qop: tuple[str, ...] = ("auth",)
    #: Accept RFC 2069 answers without qop (RFC 8760 makes qop mandatory: off by default).
    allow_qop_less: bool = False
    nonce_ttl: int = 300
    bind_source_ip: bool = False
    bind_call_id: bool = False
    replay_mode: ReplayMode = ReplayMode.NC
    #: Check that the digest uri matches the Request-URI (RFC 3261 section 22.4).
    verify_uri: bool = True
    #: Offer userhash (RFC 7616 section 3.4.4): the UA may send H(username ":" realm).
    userhash: bool = False

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError(f"realm {self.realm!r}: at least one algorithm must be offered")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError(f"realm {self.realm!r}: an algorithm is listed twice")
        if not self.qop and not self.allow_qop_less:
            raise ValueError(f"realm {self.realm!r}: offer a qop or allow answers without one")
        for value in self.qop:
            if value not in QOP_VALUES:
                raise ValueError(f"realm {self.realm!r}: unknown qop {value!r}")
        if self.nonce_ttl <= 0:
            raise ValueError(f"realm {self.realm!r}: nonce_ttl must be positive")

    def binding(self, source_ip: str, call_id: str) -> NonceBinding:
        """What this realm's nonces are bound to for a request from ``source_ip`` with ``call_id``."""
        return NonceBinding(
            realm=self.realm,
            source_ip=source_ip if self.bind_source_ip else "",
            call_id=call_id if self.bind_call_id else "",
        )
