"""The digest algorithms of RFC 7616 section 3.3 and RFC 8760 section 2.

One table from base algorithm to hash function; each ``-sess`` variant is
derived from its base rather than listed again (RFC 7616 section 3.4.2).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable

from .errors import UnsupportedAlgorithm

__all__ = ["Algorithm"]

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    # RFC 7616 section 3.2: SHA-512/256 is SHA-512 with other initial values,
    # truncated to 256 bits; it is not a truncated plain SHA-512.
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
}

_SESS = "-sess"


class Algorithm(enum.Enum):
    """An algorithm token as it appears on the wire (RFC 7616 section 3.3)."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA_256 = "SHA-256"
    SHA_256_SESS = "SHA-256-sess"
    SHA_512_256 = "SHA-512-256"
    SHA_512_256_SESS = "SHA-512-256-sess"

    # Per-member facts, set once below the class: the hot paths read them for every request.
    _token: str
    _base: Algorithm
    _is_session: bool
    _hash: Callable[[bytes], str]

    @property
    def token(self) -> str:
        """The token written in challenges, e.g. ``SHA-256-sess``."""
        return self._token

    @property
    def base(self) -> Algorithm:
        """The algorithm without ``-sess``: HA1s are stored per base algorithm."""
        return self._base

    @property
    def is_session(self) -> bool:
        """Whether HA1 is re-keyed with the nonces (RFC 7616 section 3.4.2)."""
        return self._is_session

    @property
    def hash_name(self) -> str:
        """Name of the hash function, e.g. ``SHA-256`` for ``SHA-256-sess``."""
        return self._base._token

    @property
    def digest_hex_length(self) -> int:
        """Length of H(...) in hex digits: 32 for MD5, 64 otherwise."""
        return 32 if self._base is Algorithm.MD5 else 64

    def h(self, data: bytes) -> str:
        """H(data) as lowercase hex (RFC 7616 section 3.4)."""
        return self._hash(data)

    @classmethod
    def parse(cls, token: str) -> Algorithm:
        """Look up a wire token case-insensitively (RFC 7616), comparing ASCII only (no Unicode case folding)."""
        if token.isascii():
            algorithm = _BY_FOLDED_TOKEN.get(token.lower())
            if algorithm is not None:
                return algorithm
        raise UnsupportedAlgorithm(f"unsupported digest algorithm {token[:40]!r}")


for _member in Algorithm:
    _member._token = _member.value
    _member._is_session = _member.value.endswith(_SESS)
    _member._base = Algorithm(_member.value.removesuffix(_SESS))
    _member._hash = _HASHES[_member._base.value]
del _member
_BY_FOLDED_TOKEN = {algorithm.value.lower(): algorithm for algorithm in Algorithm}
