"""Stateless nonces: minted and checked with HMAC, no storage needed to issue one.

A nonce is ``base64url(header | mac)`` where::

    header = version (1) | key id (4) | algorithm (1) | expires-at ms (8) | random (12)
    mac    = HMAC-SHA256(key, header | realm | source_ip | call_id)[:16]

(the three strings are length-prefixed). So a forged or altered nonce is
refused without any round trip; an expired but genuine one is told apart
from a forged one (the UA gets ``stale=true``); the nonce is bound to the
realm, to the algorithm it was offered with (RFC 8760 section 3: no
downgrade) and to the configured bindings. Keys are identified by a hash of
the secret, so replicas given the same secrets agree on ids with no extra
setting; the first key mints, all keys verify (rotation).

Pure code: time and randomness are arguments (randomness defaults to os.urandom,
read in blocks).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .digest.algorithms import Algorithm

__all__ = [
    "NONCE_LENGTH",
    "NonceBinding",
    "NonceForged",
    "NonceKeyring",
    "OpenedNonce",
]

_VERSION = 1
_HEADER = struct.Struct(">B4sBQ12s")
_MAC_BYTES = 16
_RAW_LENGTH = _HEADER.size + _MAC_BYTES
#: Length of every nonce minted here, in characters.
NONCE_LENGTH = len(base64.urlsafe_b64encode(b"\0" * _RAW_LENGTH))
_ALGORITHMS = tuple(Algorithm)
_ALGORITHM_CODES = {algorithm: code for code, algorithm in enumerate(_ALGORITHMS)}
_MIN_SECRET_BYTES = 32


class NonceForged(ValueError):
    """The nonce was not minted by any configured key for this context."""

    reason = "nonce_forged"


@dataclass(frozen=True, slots=True)
class NonceBinding:
    """What a nonce is bound to besides its key: the realm and optional request facts.

    Leave ``source_ip`` / ``call_id`` empty when that binding is not configured.
    """

    realm: str
    source_ip: str = ""
    call_id: str = ""

    def encode(self) -> bytes:
        """Length-prefixed UTF-8, so no two bindings encode alike."""
        return _encode_binding(self.realm, self.source_ip, self.call_id)


@functools.lru_cache(maxsize=1024)
def _encode_binding(*texts: str) -> bytes:
    # Cached: without per-request bindings every nonce of a realm has the same one.
    out = bytearray()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        out += struct.pack(">I", len(data)) + data
    return bytes(out)


@dataclass(frozen=True, slots=True)
class OpenedNonce:
    """A nonce whose MAC checked out."""

    algorithm: Algorithm
    expires_at: float
    key_id: bytes
    #: Stable, unique, printable id for the replay store (the MAC, base64url).
    replay_id: str

    def expired(self, now: float) -> bool:
        """Whether the nonce's lifetime is over at ``now`` (seconds since the epoch)."""
        return now >= self.expires_at

    def remaining(self, now: float) -> float:
        """Seconds of life left at ``now`` (0 when expired)."""
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: bytes
    #: SHA-256 states after the HMAC key's inner and outer pads (RFC 2104): a MAC is two copies,
    #: two updates and two digests, all in C (hmac.HMAC adds a Python layer to each).
    inner: Any
    outer: Any


class _RandomPool:
    """os.urandom read 4 KiB at a time and handed out in slices: one system call per ~340 nonces.

    Each byte is handed out once (a lock orders threads); a forked child starts empty, so that
    two processes never hand out the same bytes.
    """

    _SIZE = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at, self._lock = b"", 0, threading.Lock()

    def take(self, count: int) -> bytes:
        """``count`` fresh random bytes."""
        with self._lock:
            at = self._at
            if at + count > len(self._pool):
                self._pool, at = os.urandom(max(self._SIZE, count)), 0
            self._at = at + count
            return self._pool[at : at + count]


_RANDOM = _RandomPool()


def _derive(secret: bytes) -> _Key:
    key_id = hashlib.sha256(b"sipauth nonce key id v1\0" + secret).digest()[:4]
    mac_key = hmac.new(secret, b"sipauth nonce mac v1", hashlib.sha256).digest()
    # RFC 2104 with a 32-byte key (shorter than SHA-256's 64-byte block): the key padded with zeros.
    block = mac_key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))
    return _Key(key_id, inner, outer)


class NonceKeyring:
    """Mints nonces with the first key and opens nonces of any key."""

    def __init__(self, secrets: Sequence[bytes], random_bytes: Callable[[int], bytes] | None = None) -> None:
        if not secrets:
            raise ValueError("at least one nonce key is required")
        keys = []
        for index, secret in enumerate(secrets):
            if len(secret) < _MIN_SECRET_BYTES:
                raise ValueError(f"nonce key #{index + 1} is shorter than {_MIN_SECRET_BYTES} bytes")
            keys.append(_derive(secret))
        self._by_id = {key.key_id: key for key in keys}
        if len(self._by_id) != len(keys):
            raise ValueError("the same nonce key is configured twice")
        self._minting = keys[0]
        self._random = random_bytes or _RANDOM.take

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Printable ids of the configured keys, minting key first (safe to log)."""
        return tuple(key_id.hex() for key_id in self._by_id)

    def _mac(self, key: _Key, header: bytes, binding: NonceBinding) -> bytes:
        inner = key.inner.copy()
        inner.update(header)
        inner.update(binding.encode())
        outer = key.outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]  # type: ignore[no-any-return]

    def mint(self, binding: NonceBinding, algorithm: Algorithm, *, now: float, ttl: float) -> str:
        """A fresh nonce for ``algorithm`` that expires ``ttl`` seconds after ``now``."""
        key = self._minting
        expires_ms = int((now + ttl) * 1000)
        header = _HEADER.pack(_VERSION, key.key_id, _ALGORITHM_CODES[algorithm], expires_ms, self._random(12))
        raw = header + self._mac(key, header, binding)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def open(self, nonce: str, binding: NonceBinding) -> OpenedNonce:
        """Check a nonce's MAC for ``binding``; raise :class:`NonceForged` if it fails.

        Expiry is not checked here: a genuine expired nonce is a different
        outcome (stale) from a forged one, so the caller decides with ``now``.
        """
        if len(nonce) != NONCE_LENGTH or not nonce.isascii():
            raise NonceForged("nonce has the wrong length")
        try:
            raw = base64.b64decode(nonce, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NonceForged("nonce is not base64url") from exc
        header, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        version, key_id, algorithm_code, expires_ms, _random = _HEADER.unpack(header)
        key = self._by_id.get(key_id)
        if version != _VERSION or key is None or algorithm_code >= len(_ALGORITHMS):
            raise NonceForged("nonce was not minted by a configured key")
        if not hmac.compare_digest(mac, self._mac(key, header, binding)):
            raise NonceForged("nonce MAC does not match")
        return OpenedNonce(
            algorithm=_ALGORITHMS[algorithm_code],
            expires_at=expires_ms / 1000,
            key_id=key_id,
            replay_id=base64.urlsafe_b64encode(mac).decode("ascii").rstrip("="),
        )
