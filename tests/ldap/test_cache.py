"""The credential cache's rules (with a source the test controls), and the example settings files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipauth.config import load_settings
from sipauth.credentials import UserRecord
from sipauth.credentials.cache import CachedCredentialSource
from sipauth.credentials.ldap_presets import resolve_profile
from sipauth.errors import CredentialsUnavailable

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Directory:
    """A CredentialSource that counts lookups, can be taken down, and answers after an optional delay."""

    def __init__(self) -> None:
        self.users = {"alice": UserRecord("alice", password="one")}
        self.down = False
        self.calls = 0
        self.delay = 0.0

    async def lookup(self, username: str, realm: str, *, refresh: bool = False) -> UserRecord | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise CredentialsUnavailable("down")
        return self.users.get(username)

    async def ping(self) -> bool:
        return not self.down

    async def close(self) -> None:
        return None


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(directory: Directory, clock: Clock, **options: float) -> CachedCredentialSource:
    return CachedCredentialSource(directory, clock=clock, **options)  # type: ignore[arg-type]


async def test_positive_and_negative_ttls() -> None:
    """Known users are kept for the positive TTL, unknown ones for the negative TTL, then re-read."""
    directory, clock = Directory(), Clock()
    cached = cache(directory, clock, positive_ttl=10, negative_ttl=2)
    for _ in range(3):
        assert (await cached.lookup("alice", "r")) is not None
        assert await cached.lookup("mallory", "r") is None
    assert directory.calls == 2
    clock.now += 3
    assert await cached.lookup("mallory", "r") is None
    assert (await cached.lookup("alice", "r")) is not None
    assert directory.calls == 3
    clock.now += 8
    await cached.lookup("alice", "r")
    assert directory.calls == 4


async def test_refresh_rereads_but_is_rate_limited() -> None:
    """refresh=True re-reads a copy older than the interval, and serves copies younger than it."""
    directory, clock = Directory(), Clock()
    cached = cache(directory, clock, refresh_min_interval=5)
    await cached.lookup("alice", "r")
    directory.users["alice"] = UserRecord("alice", password="two")
    for _ in range(10):
        record = await cached.lookup("alice", "r", refresh=True)
        assert record is not None
        assert record.password == "one"
    assert directory.calls == 1
    clock.now += 5
    record = await cached.lookup("alice", "r", refresh=True)
    assert record is not None
    assert record.password == "two"
    assert directory.calls == 2


async def test_single_flight() -> None:
    """Concurrent lookups of one user share a single source lookup."""
    directory, clock = Directory(), Clock()
    directory.delay = 0.05
    cached = cache(directory, clock)
    records = await asyncio.gather(*(cached.lookup("alice", "r") for _ in range(50)))
    assert all(r is not None and r.username == "alice" for r in records)
    assert directory.calls == 1


async def test_single_flight_shares_failures() -> None:
    """When the shared lookup fails, every waiter gets CredentialsUnavailable."""
    directory, clock = Directory(), Clock()
    directory.delay, directory.down = 0.05, True
    cached = cache(directory, clock)
    results = await asyncio.gather(*(cached.lookup("bob", "r") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, CredentialsUnavailable) for r in results)
    assert directory.calls == 1


async def test_serve_stale_is_bounded_and_never_for_unknown_users() -> None:
    """Source down: known users come from stale entries up to stale_max_age; unknown or uncached users raise."""
    directory, clock = Directory(), Clock()
    cached = cache(directory, clock, positive_ttl=1, negative_ttl=1, stale_max_age=100, retry_after=0)
    await cached.lookup("alice", "r")
    await cached.lookup("mallory", "r")
    directory.down = True
    clock.now += 50
    assert (await cached.lookup("alice", "r")) is not None
    with pytest.raises(CredentialsUnavailable):
        await cached.lookup("mallory", "r")
    with pytest.raises(CredentialsUnavailable):
        await cached.lookup("bob", "r")
    clock.now += 51
    with pytest.raises(CredentialsUnavailable):
        await cached.lookup("alice", "r")


async def test_no_serve_stale_when_disabled() -> None:
    """With serve_stale off, an expired entry is not used while the source is down."""
    directory, clock = Directory(), Clock()
    cached = cache(directory, clock, positive_ttl=1, retry_after=0)
    cached.serve_stale = False
    await cached.lookup("alice", "r")
    directory.down = True
    clock.now += 2
    with pytest.raises(CredentialsUnavailable):
        await cached.lookup("alice", "r")


async def test_retry_after_spares_a_down_source() -> None:
    """After a failure the source is not asked again until retry_after has passed."""
    directory, clock = Directory(), Clock()
    directory.down = True
    cached = cache(directory, clock, retry_after=1)
    for _ in range(5):
        with pytest.raises(CredentialsUnavailable):
            await cached.lookup("alice", "r")
    assert directory.calls == 1
    directory.down = False
    clock.now += 1
    assert (await cached.lookup("alice", "r")) is not None


async def test_size_bound_evicts_least_recently_used() -> None:
    """The cache never holds more than max_entries; the least recently used entry goes first."""
    directory, clock = Directory(), Clock()
    cached = cache(directory, clock, max_entries=3)
    for name in ("a", "b", "c"):
        await cached.lookup(name, "r")
    await cached.lookup("a", "r")
    await cached.lookup("d", "r")
    assert len(cached) == 3
    calls = directory.calls
    await cached.lookup("a", "r")
    assert directory.calls == calls
    await cached.lookup("b", "r")
    assert directory.calls == calls + 1


@pytest.mark.parametrize("name", ["ldap-active-directory", "ldap-openldap", "ldap-h350"])
def test_example_settings_validate(name: str) -> None:
    """Each example settings file loads and resolves its preset into a usable mapping."""
    settings = load_settings(EXAMPLES / f"{name}.yaml", environ={})
    assert settings.ldap is not None
    profile = resolve_profile(settings.ldap)
    assert "{username}" in profile.user_filter
    assert profile.ha1 or profile.password


async def test_a_caller_giving_up_does_not_cancel_the_shared_lookup() -> None:
    """When the caller that started a lookup is cancelled, others waiting on it still get the answer."""
    directory, clock = Directory(), Clock()
    directory.delay = 0.1
    cached = cache(directory, clock)
    first = asyncio.ensure_future(cached.lookup("alice", "example.test"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(cached.lookup("alice", "example.test"))
    await asyncio.sleep(0.01)
    first.cancel()
    record = await second
    assert record is not None
    assert record.username == "alice"
    assert first.cancelled()
    assert directory.calls == 1
    assert await cached.lookup("alice", "example.test") is record  # and the answer was cached
    assert directory.calls == 1
