"""A lean gRPC load generator for what h2load cannot send: a different request each time.

One process of ``python -m bench.loadgen`` builds its requests first (fresh
nonces minted with the bench's nonce key, MD5 answers with qop=auth and
nc=00000001, so every VerifyResponse is a first use: ACCEPT), connects,
warms up, prints ``ready``, waits for ``go`` on stdin, then sends: closed
loop (``--concurrency`` calls in flight) or open loop (``--rate`` calls per
second on a fixed schedule, latency counted from the scheduled time). Bytes
go out pre-serialized and come back unparsed: the verdict is checked on the
response's first two bytes (field 1 = VERDICT_ACCEPT). It writes a JSON
summary (counts, elapsed, latencies in microseconds) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import grpc
import uvloop

from sipauth.digest import Algorithm
from sipauth.nonce import NonceBinding, NonceKeyring
from sipauth_client.v1 import auth_pb2

METHOD = "/sipauth.v1.AuthService/VerifyResponse"
_ACCEPT_PREFIX = bytes([0x08, auth_pb2.VERDICT_ACCEPT])


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def accept_requests(
    key: bytes, users: list[tuple[str, str]], count: int, *, realm: str, uri: str, source_ip: str, ttl: float
) -> list[bytes]:
    """``count`` serialized VerifyResponseRequests, each a correct first answer to a fresh nonce."""
    keyring = NonceKeyring([key])
    binding = NonceBinding(realm)
    now = time.time()
    ha1s = {name: _md5(f"{name}:{realm}:{password}") for name, password in users}
    ha2 = _md5(f"REGISTER:{uri}")
    out = []
    for index in range(count):
        name = users[index % len(users)][0]
        nonce = keyring.mint(binding, Algorithm.MD5, now=now, ttl=ttl)
        cnonce = os.urandom(8).hex()
        response = _md5(f"{ha1s[name]}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        header = (
            f'Digest username="{name}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"'
        )
        out.append(
            auth_pb2.VerifyResponseRequest(
                authorization=header,
                method="REGISTER",
                request_uri=uri,
                type=auth_pb2.CHALLENGE_TYPE_WWW,
                source_ip=source_ip,
                call_id=f"{cnonce}@bench",
            ).SerializeToString()
        )
    return out


class _Run:
    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.next = 0
        self.ok = 0
        self.bad = 0
        self.errors = 0
        self.latencies: list[float] = []

    def take(self) -> bytes | None:
        if self.next >= len(self.requests):
            return None
        request = self.requests[self.next]
        self.next += 1
        return request

    async def one(self, call, request: bytes, started: float) -> None:
        try:
            response = await call(request, timeout=10)
        except grpc.RpcError:
            self.errors += 1
            return
        self.latencies.append(time.perf_counter() - started)
        if response[:2] == _ACCEPT_PREFIX:
            self.ok += 1
        else:
            self.bad += 1


async def _closed(run: _Run, call, concurrency: int, deadline: float) -> None:
    async def worker() -> None:
        while time.perf_counter() < deadline:
            request = run.take()
            if request is None:
                return
            await run.one(call, request, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open(run: _Run, call, rate: float, deadline: float) -> None:
    tasks = set()
    start = time.perf_counter()
    index = 0
    while True:
        scheduled = start + index / rate
        if scheduled >= deadline:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = run.take()
        if request is None:
            break
        task = asyncio.ensure_future(run.one(call, request, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    if tasks:
        await asyncio.wait(tasks, timeout=10)


async def _main(args: argparse.Namespace) -> dict:
    users = [tuple(pair.split(":", 1)) for pair in args.users.split(",")]
    requests = accept_requests(
        Path(args.key_file).read_text().split()[0].encode(),
        users,
        args.count + args.warmup,
        realm=args.realm,
        uri=args.uri,
        source_ip=args.source_ip,
        ttl=600,
    )
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = channel.unary_unary(METHOD)
        warm = _Run(requests[: args.warmup])
        await _closed(warm, call, 4, time.perf_counter() + 30)
        run = _Run(requests[args.warmup :])
        # The generator's own collector must not pause it mid-run (its pauses would count as latency):
        # everything made so far is frozen, and collection stays off for the bounded run.
        gc.collect()
        gc.freeze()
        gc.disable()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.perf_counter()
        deadline = started + args.duration
        if args.rate:
            await _open(run, call, args.rate, deadline)
        else:
            await _closed(run, call, args.concurrency, deadline)
        elapsed = time.perf_counter() - started
    return {
        "ok": run.ok,
        "bad": run.bad,
        "errors": run.errors,
        "warmup_bad": warm.bad + warm.errors,
        "exhausted": run.next >= len(run.requests),
        "elapsed": elapsed,
        "latencies_us": [round(x * 1e6) for x in run.latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--users", required=True, help="name:password,name:password...")
    parser.add_argument("--realm", default="example.test")
    parser.add_argument("--uri", default="sip:example.test")
    parser.add_argument("--source-ip", default="127.0.0.1")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: calls per second (0: closed loop)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = uvloop.run(_main(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
