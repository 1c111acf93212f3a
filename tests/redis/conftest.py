"""Fixtures for the Redis tests: Sentinel and Cluster shared per module, wiped before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_cluster import RedisClusterServers
from tests.support.redis_sentinel import RedisSentinel


@pytest.fixture(scope="module")
def sentinel_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """Master + replica + Sentinel, started once per module."""
    setup = RedisSentinel(tmp_path_factory.mktemp("sentinel")).start()
    yield setup
    setup.stop()


@pytest.fixture
def sentinel(sentinel_servers: RedisSentinel) -> RedisSentinel:
    """The module's Sentinel setup with every key deleted."""
    sentinel_servers.flush()
    return sentinel_servers


@pytest.fixture(scope="module")
def cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster, started once per module."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(cluster_servers: RedisClusterServers) -> RedisClusterServers:
    """The module's cluster with every key deleted."""
    cluster_servers.flush()
    return cluster_servers
