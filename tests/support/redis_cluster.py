"""A real Redis Cluster of three masters (no replicas) on free loopback ports."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from .procs import free_port, require_binary, wait_until
from .redis_server import RedisServer

__all__ = ["RedisClusterServers"]


@dataclass
class RedisClusterServers:
    """Three cluster-enabled redis-servers joined into one cluster with every slot covered."""

    workdir: Path
    size: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        """host:port of every node (any of them is a valid seed)."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def client(self) -> RedisCluster:
        """A synchronous cluster client for assertions."""
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in self.nodes])

    def start(self) -> RedisClusterServers:
        """Start the nodes, create the cluster, wait for ``cluster_state:ok`` on each."""
        cli = require_binary("redis-cli", "redis-server")
        for index in range(self.size):
            folder = self.workdir / f"node{index}"
            bus = free_port()
            node = RedisServer(
                folder,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-port", str(bus),
                    "--cluster-node-timeout", "2000",
                ),
            )  # fmt: skip
            self.nodes.append(node.start())
        subprocess.run(
            [cli, "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for node in self.nodes:
            with node.client() as client:
                wait_until(lambda c=client: c.cluster("info")["cluster_state"] == "ok", 20, "cluster_state:ok")
        return self

    def keys(self) -> list[bytes]:
        """Every key on every node."""
        found: list[bytes] = []
        for node in self.nodes:
            with node.client() as client:
                found.extend(client.keys("*"))
        return found

    def node_clients(self) -> list[redis.Redis]:
        """One plain client per node (close them after use)."""
        return [node.client() for node in self.nodes]

    def flush(self) -> None:
        """Delete every key on every node."""
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
