"""A real Sentinel setup: a master, its replicas and one Sentinel, on free loopback ports."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from .procs import free_port, require_binary, stop_process, wait_until
from .redis_server import RedisServer

__all__ = ["RedisSentinel"]


@dataclass
class RedisSentinel:
    """Master + replicas + Sentinel. After a failover ``master()`` / ``replica()`` follow the new roles."""

    workdir: Path
    replicas: int = 1
    master_name: str = "sipauth"
    sentinel_port: int = field(default_factory=free_port)
    servers: list[RedisServer] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sentinel_address(self) -> str:
        """host:port of the Sentinel."""
        return f"127.0.0.1:{self.sentinel_port}"

    def sentinel_client(self) -> redis.Redis:
        """A synchronous client of the Sentinel itself."""
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=5, decode_responses=True)

    def master_address(self) -> tuple[str, int]:
        """The master's address as the Sentinel reports it now."""
        with self.sentinel_client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return str(host), int(port)

    def master(self) -> RedisServer:
        """The server that is master now."""
        _host, port = self.master_address()
        return next(server for server in self.servers if server.port == port)

    def replica(self) -> RedisServer:
        """A server that is replica now."""
        _host, port = self.master_address()
        return next(server for server in self.servers if server.port != port)

    def start(self) -> RedisSentinel:
        """Start the master, the replicas (synced) and the Sentinel (aware of all)."""
        binary = require_binary("redis-server", "redis-server")
        # No diskless-sync delay: the replica is in sync in milliseconds, not after Redis's default 5 s.
        fast_sync = ("--repl-diskless-sync-delay", "0")
        master = RedisServer(self.workdir / "a", extra_args=fast_sync).start()
        self.servers = [master]
        for index in range(self.replicas):
            replica = RedisServer(
                self.workdir / f"replica{index}", extra_args=(*fast_sync, "--replicaof", "127.0.0.1", str(master.port))
            ).start()
            self.servers.append(replica)
            with replica.client() as client:
                wait_until(lambda c=client: c.info("replication")["master_link_status"] == "up", 10, "replica in sync")
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"logfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 10000\n"
        )
        self.proc = subprocess.Popen(
            [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with self.sentinel_client() as client:

            def replicas_known() -> bool:
                replicas = client.execute_command("SENTINEL", "REPLICAS", self.master_name)
                known = {int(entry["port"]) for entry in replicas if "disconnected" not in entry["flags"]}
                return known >= {server.port for server in self.servers[1:]}

            wait_until(replicas_known, 20, "Sentinel to discover the replicas")
        return self

    def failover(self, timeout: float = 30) -> RedisServer:
        """Force a failover; return once Sentinel names the promoted replica and it takes writes.

        Sentinel turns the old master into a replica only on its next check,
        up to ~10 s later: until then it still takes writes from clients that
        kept a connection to it, which is the case ``wait_replicas`` covers.
        """
        old = self.master()
        deadline = time.monotonic() + timeout
        # Sentinel aborts a failover when its view of the replica is not fresh enough (a loaded
        # machine): ask again until it promotes one, within the same overall timeout.
        while self.master_address()[1] == old.port:
            if time.monotonic() >= deadline:
                pytest.fail(f"Sentinel did not promote the replica within {timeout}s")
            with self.sentinel_client() as client, contextlib.suppress(redis.ResponseError):
                client.execute_command("SENTINEL", "FAILOVER", self.master_name)
            attempt_end = min(deadline, time.monotonic() + 4)
            while time.monotonic() < attempt_end and self.master_address()[1] == old.port:
                time.sleep(0.05)
        new = self.master()
        with new.client() as client:
            wait_until(lambda: client.info("replication")["role"] == "master", timeout, "the new master")
        return new

    def flush(self) -> None:
        """Delete every key (on the master; the replicas follow)."""
        with self.master().client() as client:
            client.flushall()
            client.execute_command("WAIT", self.replicas, 2000)

    def stop(self) -> None:
        """Stop the Sentinel and both servers."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        for server in self.servers:
            server.stop()
