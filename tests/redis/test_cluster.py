"""Replay state on a 3-master Redis Cluster: keys spread over slots, one ACCEPT across replicas."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.cluster import key_slot

from sipauth.replay.redis import RedisEndpoint, connect, replay_key
from tests.redis.traffic import answer, attempt, challenge, client, concurrent_copies
from tests.support.redis_cluster import RedisClusterServers
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.redis


async def test_cluster_guard_spreads_nonces_and_refuses_replays(cluster: RedisClusterServers) -> None:
    """From one seed node the guard reaches every master.

    60 nonces land on all three, each key in its hash-tag slot, and each replay is refused.
    """
    nodes = tuple(("127.0.0.1", node.port) for node in cluster.nodes[:1])  # one seed is enough
    guard = connect(RedisEndpoint(mode="cluster", nodes=nodes, timeout=1.0))
    try:
        ids = [base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=") for _ in range(60)]
        for rid in ids:
            assert await guard.consume(rid, 1, 30)
            assert not await guard.consume(rid, 1, 30)
            assert key_slot(replay_key(rid).encode()) == key_slot(rid.encode())
        per_node = []
        for admin in cluster.node_clients():
            with admin:
                per_node.append(admin.dbsize())
        assert sum(per_node) == 60
        assert all(count > 0 for count in per_node), per_node
        assert await guard.ping()
    finally:
        await guard.close()


async def test_three_replicas_on_cluster_accept_an_answer_once(
    cluster: RedisClusterServers, sipauth_process: Callable[..., SipauthProcess], nonce_keys_file: Path
) -> None:
    """Three sipauth processes on the Cluster: nonces cross between them, and 200 copies of an answer get one ACCEPT."""
    settings = {
        "redis": {"mode": "cluster", "nodes": cluster.addresses[:2], "timeout_ms": 500},
        "nonce_keys_file": str(nonce_keys_file),
        "log_level": "warning",
    }
    replicas = [sipauth_process(settings, name=f"replica{index}") for index in range(3)]
    clients = [client(replica.target, timeout=5) for replica in replicas]
    try:
        for index, minting in enumerate(clients):
            assert (await attempt(minting, clients[(index + 1) % 3]))[1].verdict == "ACCEPT"
        authorization = answer(await challenge(clients[1]))
        verdicts = await concurrent_copies(clients, authorization, 200)
        assert verdicts.count("ACCEPT") == 1
        assert verdicts.count("STALE") == 199
        assert len(cluster.keys()) == 4
    finally:
        for sipauth in clients:
            await sipauth.close()
