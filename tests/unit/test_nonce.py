"""Stateless nonces: genuine ones open, anything altered is forged, expiry is told apart."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipauth.digest import Algorithm
from sipauth.nonce import NONCE_LENGTH, NonceBinding, NonceForged, NonceKeyring

KEY_A = b"a" * 32
KEY_B = b"b" * 40
BINDING = NonceBinding("example.test", "192.0.2.1", "call-1@host")
NOW = 1_700_000_000.0


def test_mint_then_open() -> None:
    """A minted nonce opens with the same binding and reports its algorithm and expiry."""
    keyring = NonceKeyring([KEY_A])
    nonce = keyring.mint(BINDING, Algorithm.SHA_256, now=NOW, ttl=300)
    assert len(nonce) == NONCE_LENGTH
    opened = keyring.open(nonce, BINDING)
    assert opened.algorithm is Algorithm.SHA_256
    assert opened.expires_at == pytest.approx(NOW + 300)
    assert not opened.expired(NOW + 299.9)
    assert opened.expired(NOW + 300)
    assert opened.remaining(NOW + 100) == pytest.approx(200)


def test_nonces_are_unique() -> None:
    """Two nonces minted at the same instant differ (random part) and have different replay ids."""
    keyring = NonceKeyring([KEY_A])
    nonces = {keyring.mint(BINDING, Algorithm.MD5, now=NOW, ttl=300) for _ in range(1000)}
    assert len(nonces) == 1000
    assert len({keyring.open(n, BINDING).replay_id for n in nonces}) == 1000


@pytest.mark.parametrize(
    "other",
    [
        NonceBinding("other.test", "192.0.2.1", "call-1@host"),
        NonceBinding("example.test", "192.0.2.2", "call-1@host"),
        NonceBinding("example.test", "192.0.2.1", "call-2@host"),
        # Length-prefixing: moving bytes between fields must not collide.
        NonceBinding("example.test192.0.2.1", "", "call-1@host"),
    ],
)
def test_binding_is_authenticated(other: NonceBinding) -> None:
    """A nonce presented with another realm, source IP or Call-ID is forged."""
    keyring = NonceKeyring([KEY_A])
    nonce = keyring.mint(BINDING, Algorithm.MD5, now=NOW, ttl=300)
    with pytest.raises(NonceForged):
        keyring.open(nonce, other)


def test_every_single_byte_change_is_detected() -> None:
    """Flipping any bit of any byte of the raw nonce makes it forged (algorithm, expiry, key id included)."""
    keyring = NonceKeyring([KEY_A])
    raw = bytearray(base64.urlsafe_b64decode(keyring.mint(BINDING, Algorithm.MD5, now=NOW, ttl=300)))
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[index] ^= bit
            with pytest.raises(NonceForged):
                keyring.open(base64.urlsafe_b64encode(bytes(tampered)).decode(), BINDING)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_strings_are_forged(text: str) -> None:
    """Any string that was not minted is refused with NonceForged, never another error."""
    keyring = NonceKeyring([KEY_A])
    with pytest.raises(NonceForged):
        keyring.open(text, BINDING)


def test_rotation_first_key_mints_all_verify() -> None:
    """After rotation (new key first) old nonces still open and new ones use the new key."""
    old = NonceKeyring([KEY_A])
    old_nonce = old.mint(BINDING, Algorithm.MD5, now=NOW, ttl=300)
    rotated = NonceKeyring([KEY_B, KEY_A])
    assert rotated.open(old_nonce, BINDING).key_id.hex() == old.key_ids[0]
    new_nonce = rotated.mint(BINDING, Algorithm.MD5, now=NOW, ttl=300)
    assert rotated.open(new_nonce, BINDING).key_id.hex() == rotated.key_ids[0]
    with pytest.raises(NonceForged):
        old.open(new_nonce, BINDING)
    with pytest.raises(NonceForged):
        NonceKeyring([KEY_B]).open(old_nonce, BINDING)


def test_replicas_with_the_same_secret_agree() -> None:
    """Two keyrings built from the same secret (two replicas) accept each other's nonces."""
    nonce = NonceKeyring([KEY_A]).mint(BINDING, Algorithm.SHA_256, now=NOW, ttl=60)
    assert NonceKeyring([KEY_A]).open(nonce, BINDING).algorithm is Algorithm.SHA_256


def test_key_validation() -> None:
    """Short keys, no keys and duplicate keys are refused at construction."""
    with pytest.raises(ValueError, match="shorter"):
        NonceKeyring([b"short"])
    with pytest.raises(ValueError, match="at least one"):
        NonceKeyring([])
    with pytest.raises(ValueError, match="twice"):
        NonceKeyring([KEY_A, KEY_A])


def test_key_ids_do_not_reveal_the_key() -> None:
    """The printable key id is a hash prefix, not a piece of the secret."""
    keyring = NonceKeyring([KEY_A])
    assert KEY_A.hex()[:8] not in keyring.key_ids[0]
    assert len(keyring.key_ids[0]) == 8


@given(st.binary(min_size=32, max_size=80), st.binary(max_size=64), st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=200)
def test_the_mac_is_rfc_2104_hmac_sha256(secret: bytes, header: bytes, realm: str, source_ip: str) -> None:
    """The precomputed-pad MAC equals hmac.new's HMAC-SHA256 (truncated) for any key, header and binding."""
    import hashlib
    import hmac

    from sipauth.nonce import _derive

    ring = NonceKeyring([secret])
    binding = NonceBinding(realm, source_ip)
    mac_key = hmac.new(secret, b"sipauth nonce mac v1", hashlib.sha256).digest()
    expected = hmac.new(mac_key, header + binding.encode(), hashlib.sha256).digest()[:16]
    assert ring._mac(_derive(secret), header, binding) == expected


def test_random_bytes_are_never_handed_out_twice_even_across_fork() -> None:
    """The buffered random source gives distinct slices, and a forked child does not repeat the parent's."""
    import os

    from sipauth.nonce import _RandomPool

    pool = _RandomPool()
    first = [pool.take(12) for _ in range(1000)]
    assert len(set(first)) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, b"".join(pool.take(12) for _ in range(10)))
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 120)
    parent = b"".join(pool.take(12) for _ in range(10))
    assert len(child) == 120
    assert child != parent
