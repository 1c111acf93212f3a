"""``make bench``: sipauth in its production shape against an empty-handler gRPC server, then SIP level.

See bench/README.md for what is measured and how to read it. Everything
listens on 127.0.0.1 and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.cpu import cpu_seconds
from bench.h2load import run_h2load
from bench.loadgen import accept_requests
from bench.servers import REALM, ROOT, ServerProcess, start_empty, start_sipauth
from bench.stats import percentile
from sipauth_client.v1 import auth_pb2

RESULTS = ROOT / "bench" / "results"
USERS = [(f"user{i:03d}", f"secret-{i:03d}") for i in range(50)]
URI = "sip:example.test"
CHALLENGE_PATH = "/sipauth.v1.AuthService/IssueChallenge"
VERIFY_PATH = "/sipauth.v1.AuthService/VerifyResponse"


def _challenge_body() -> bytes:
    return auth_pb2.IssueChallengeRequest(
        method="REGISTER", request_uri=URI, type=auth_pb2.CHALLENGE_TYPE_WWW, source_ip="127.0.0.1", call_id="c@bench"
    ).SerializeToString()


def _missing_body() -> bytes:
    """A request without credentials: REJECT credentials_missing with a fresh challenge."""
    return auth_pb2.VerifyResponseRequest(
        method="REGISTER", request_uri=URI, type=auth_pb2.CHALLENGE_TYPE_WWW, source_ip="127.0.0.1", call_id="c@bench"
    ).SerializeToString()


def _summary(name: str, count: int, elapsed: float, cpu: float, latencies_us: list[int], *, extra: dict) -> dict:
    return {
        "name": name,
        "requests": count,
        "elapsed_s": round(elapsed, 3),
        "rps": round(count / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies_us, 50) / 1000, 3),
        "p99_ms": round(percentile(latencies_us, 99) / 1000, 3),
        "server_cpu_s": round(cpu, 3),
        "cpu_us_per_request": round(cpu / count * 1e6, 1) if count else None,
        **extra,
    }


class Bench:
    """One run: its servers, its workdir, its measurements."""

    def __init__(self, workdir: Path, duration: float, quick: bool, rounds: int = 2) -> None:
        self.workdir = workdir
        self.duration = duration
        self.quick = quick
        self.rounds = rounds
        self.results: dict[str, dict] = {}
        self._raw: dict[str, tuple[int, float, float, list[int], dict]] = {}
        self.latencies: dict[str, list[int]] = {}
        self.key_file = workdir / "nonce-keys"
        self.key_file.write_text(os.urandom(32).hex() + "\n")

    # -- load ---------------------------------------------------------------

    def h2load(
        self,
        server: ServerProcess,
        name: str,
        path: str,
        body: bytes,
        *,
        clients: int = 4,
        streams: int = 16,
        duration: float | None = None,
    ) -> dict:
        before = cpu_seconds(server.pid)
        result = run_h2load(
            server.target,
            path,
            body,
            self.workdir,
            duration=duration or self.duration,
            clients=clients,
            streams=streams,
            name=name,
        )
        cpu = cpu_seconds(server.pid) - before
        extra = {"generator": "h2load", "failed": result.failed, "clients": clients, "streams": streams}
        return self._add(name, result.succeeded, result.elapsed, cpu, result.latencies_us, extra=extra)

    def loadgen(
        self,
        server: ServerProcess,
        name: str,
        *,
        processes: int = 2,
        concurrency: int = 16,
        rate: float = 0.0,
        duration: float | None = None,
    ) -> dict:
        """ACCEPT answers from ``processes`` Python generators (closed loop, or open loop at ``rate`` in all)."""
        duration = duration or self.duration
        per_process = int((rate / processes if rate else 4000) * duration * 1.3) + 500
        users = ",".join(f"{n}:{p}" for n, p in USERS)
        procs = []
        for index in range(processes):
            out = self.workdir / f"{name}-{index}.json"
            argv = [
                sys.executable, "-m", "bench.loadgen",
                "--target", server.target, "--key-file", str(self.key_file), "--users", users,
                "--count", str(per_process), "--duration", str(duration),
                "--concurrency", str(concurrency), "--rate", str(rate / processes if rate else 0), "--out", str(out),
            ]  # fmt: skip
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            procs.append((proc, out))
        for proc, _ in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"load generator failed to start: {line!r}")
        before = cpu_seconds(server.pid)
        for proc, _ in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc, _ in procs:
            proc.wait(duration + 60)
        cpu = cpu_seconds(server.pid) - before
        ok = bad = errors = 0
        elapsed = 0.0
        latencies: list[int] = []
        exhausted = False
        for _, out in procs:
            data = json.loads(out.read_text())
            ok, bad, errors = ok + data["ok"], bad + data["bad"], errors + data["errors"]
            elapsed = max(elapsed, data["elapsed"])
            latencies += data["latencies_us"]
            exhausted = exhausted or data["exhausted"]
        extra = {
            "generator": f"python x{processes}",
            "accepted": ok,
            "not_accepted": bad,
            "errors": errors,
            "concurrency": concurrency * processes,
            "target_rate": rate or None,
            "ran_out_of_requests": exhausted,
        }
        counts = ("accepted", "not_accepted", "errors")
        return self._add(name, ok + bad, elapsed, cpu, latencies, extra=extra, counts=counts)

    def _add(
        self,
        name: str,
        count: int,
        elapsed: float,
        cpu: float,
        latencies: list[int],
        *,
        extra: dict,
        counts: tuple[str, ...] = ("failed",),
    ) -> dict:
        """Record one round of ``name``; rounds of the same name add up (requests, time, CPU, latencies)."""
        previous = self._raw.get(name)
        if previous is not None:
            count, elapsed, cpu = count + previous[0], elapsed + previous[1], cpu + previous[2]
            latencies = previous[3] + latencies
            extra = {**extra, **{key: extra[key] + previous[4][key] for key in counts}}
            extra["rounds"] = previous[4]["rounds"] + 1
        else:
            extra = {**extra, "rounds": 1}
        self._raw[name] = (count, elapsed, cpu, latencies, extra)
        summary = _summary(name, count, elapsed, cpu, latencies, extra=extra)
        self._record(name, summary, latencies)
        return summary

    def _record(self, name: str, summary: dict, latencies: list[int]) -> None:
        self.results[name] = summary
        self.latencies[name] = latencies
        print(
            f"  {name:<34} {summary['rps']:>8.0f} req/s  p50 {summary['p50_ms']:>7.2f} ms  "
            f"p99 {summary['p99_ms']:>7.2f} ms  {summary['cpu_us_per_request'] or 0:>7.1f} us CPU/req",
            flush=True,
        )

    # -- checks -------------------------------------------------------------

    def check_verdicts(self, target: str) -> dict:
        """One call of each kind, checked: the fixed bodies give what their names say."""
        out = {}
        with grpc.insecure_channel(target) as channel:
            challenge_type = auth_pb2.IssueChallengeResponse
            issue = channel.unary_unary(CHALLENGE_PATH, response_deserializer=challenge_type.FromString)
            verify = channel.unary_unary(VERIFY_PATH, response_deserializer=auth_pb2.VerifyResponseResponse.FromString)
            challenge = issue(_challenge_body(), timeout=10)
            assert challenge.status_code == 401, challenge
            out["challenge_values"] = len(challenge.header_values)
            missing = verify(_missing_body(), timeout=10)
            assert missing.reason == "credentials_missing", missing
            for request in accept_requests(
                self.key_file.read_text().split()[0].encode(),
                USERS,
                len(USERS),
                realm=REALM,
                uri=URI,
                source_ip="127.0.0.1",
                ttl=600,
            ):
                verdict = verify(request, timeout=10)
                assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict
        return out


def _sipauth_settings(bench: Bench, redis_url: str, ldap: dict) -> dict:
    return {
        "listen": "127.0.0.1:0",
        "default_realm": REALM,
        "policy": {"algorithms": ["SHA-256", "MD5"], "qop": ["auth"], "nonce_ttl_seconds": 300, "replay_mode": "nc"},
        "nonce_keys_file": str(bench.key_file),
        "redis": {"url": redis_url},
        "ldap": ldap,
        "log_level": "info",
    }


def run_grpc(bench: Bench) -> dict:  # noqa: PLR0915 - one phase after the other, in order
    """Part 1: gRPC level, sipauth vs the empty handler; scaling to 2 workers."""
    from tests.support.procs import free_port
    from tests.support.redis_server import RedisServer
    from tests.support.slapd import LdapUser, start_slapd

    print("starting redis-server and slapd (50 users)...", flush=True)
    redis = RedisServer(bench.workdir / "redis").start()
    slapd = start_slapd(bench.workdir / "ldap", [LdapUser(name, password) for name, password in USERS])
    servers: list[ServerProcess] = []
    try:
        settings = _sipauth_settings(bench, redis.url, slapd.sipauth_settings("openldap"))
        proxy_port = free_port()
        # One server process pinned to one core, its load generator on the other (as RECIPES measures the floor).
        empty = start_empty(bench.workdir, cpus="1")
        servers.append(empty)
        sipauth = start_sipauth(
            bench.workdir,
            {**settings, "proxy_listen": f"127.0.0.1:{proxy_port}"},
            workers=1,
            cpus="1",
            name="sipauth-1",
        )
        servers.append(sipauth)
        # The same process, called on its proxies' port (proxy_listen) by the same generator.
        via_proxy_port = dataclasses.replace(sipauth, port=proxy_port)
        bench.check_verdicts(sipauth.target)  # also warms the credential cache: every user once
        slapd.wait_for_log()
        searches_before = slapd.searches()
        redis_before = redis.client().info("commandstats")

        print("gRPC level: one server process on core 1, load generators on core 0", flush=True)
        generator_cpus = "0"
        os.sched_setaffinity(0, {int(generator_cpus)})
        # Each comparison alternates in rounds (empty, sipauth, empty, sipauth...) and adds them up:
        # a burst of noise from the rest of the machine then weighs on both sides.
        rounds = bench.rounds
        span = bench.duration / rounds
        for _ in range(rounds):
            bench.h2load(empty, "empty IssueChallenge", CHALLENGE_PATH, _challenge_body(), duration=span)
            bench.h2load(sipauth, "sipauth IssueChallenge", CHALLENGE_PATH, _challenge_body(), duration=span)
        for _ in range(rounds):
            bench.h2load(empty, "empty VerifyResponse (h2load)", VERIFY_PATH, _missing_body(), duration=span)
            bench.h2load(sipauth, "sipauth VerifyResponse REJECT", VERIFY_PATH, _missing_body(), duration=span)
        for _ in range(rounds):
            bench.loadgen(empty, "empty VerifyResponse (python)", duration=span)
            accept = bench.loadgen(sipauth, "sipauth VerifyResponse ACCEPT", duration=span)
            bench.loadgen(via_proxy_port, "sipauth ACCEPT, proxies' port", duration=span)
        half = accept["rps"] / 2
        for _ in range(rounds):
            bench.loadgen(sipauth, "sipauth ACCEPT at half load", rate=half, duration=span)
            bench.loadgen(empty, "empty at the same rate", rate=half, duration=span)
        slapd.wait_for_log()
        searches = slapd.searches() - searches_before
        redis_calls = _redis_calls(redis_before, redis.client().info("commandstats"))
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        for server in servers:
            server.stop()
        servers.clear()

        # pin_workers: a worker and its gRPC threads on one CPU each, so "1 worker" is one CPU's worth;
        # the generator runs where the scheduler puts it (on the idle CPU, then beside the workers).
        print("scaling: 1 worker on one CPU vs 2 workers on two (pin_workers), generator unpinned", flush=True)
        settings = {**settings, "pin_workers": True}
        one = start_sipauth(bench.workdir, settings, workers=1, name="sipauth-w1")
        servers.append(one)
        bench.h2load(one, "1 worker IssueChallenge", CHALLENGE_PATH, _challenge_body(), clients=64, streams=2)
        one.stop()
        servers.clear()
        two = start_sipauth(bench.workdir, settings, workers=2, name="sipauth-w2")
        servers.append(two)
        bench.check_verdicts(two.target)
        bench.h2load(two, "2 workers IssueChallenge", CHALLENGE_PATH, _challenge_body(), clients=64, streams=2)
    finally:
        for server in servers:
            server.stop()
        slapd.stop()
        redis.stop()
    accepted = bench.results["sipauth VerifyResponse ACCEPT"]["accepted"]
    return {"ldap_searches_during_load": searches, "redis_commands": redis_calls, "accepts_measured": accepted}


def _redis_calls(before: dict, after: dict) -> dict:
    out = {}
    for name, stats in after.items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        if calls:
            out[name.removeprefix("cmdstat_")] = calls
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarise(bench: Bench, grpc_facts: dict, sip: dict | None) -> dict:
    r = bench.results
    cpu = {name: value["cpu_us_per_request"] for name, value in r.items()}
    summary: dict[str, Any] = {
        "challenge_cpu_ratio": _ratio(cpu["sipauth IssueChallenge"], cpu["empty IssueChallenge"]),
        "verify_accept_cpu_ratio": _ratio(cpu["sipauth VerifyResponse ACCEPT"], cpu["empty VerifyResponse (python)"]),
        "verify_reject_cpu_ratio": _ratio(cpu["sipauth VerifyResponse REJECT"], cpu["empty VerifyResponse (h2load)"]),
        # Not the target's comparison (the baseline is a grpc.aio server, the proxies' port is not): the
        # CPU of an ACCEPT on the port proxies call, over the empty grpc.aio handler's.
        "verify_accept_proxy_port_cpu_ratio": _ratio(
            cpu["sipauth ACCEPT, proxies' port"], cpu["empty VerifyResponse (python)"]
        ),
        "workers_scaling": _ratio(r["2 workers IssueChallenge"]["rps"], r["1 worker IssueChallenge"]["rps"]),
        "p99_ms_at_half_load": r["sipauth ACCEPT at half load"]["p99_ms"],
        "sip_register_ratio_vs_floor": None,
        "kamailio_cpu_ms_per_transaction": None,
        "grpc": r,
        "facts": grpc_facts,
    }
    if sip:
        summary.update(sip.pop("summary"))
        summary["sip"] = sip
    summary["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf_backend": __import__("google.protobuf.internal.api_implementation", fromlist=["x"]).Type(),
        "loadavg_at_end": os.getloadavg(),
    }
    summary["duration_per_phase_s"] = bench.duration
    summary["rounds_per_comparison"] = bench.rounds
    return summary


def print_table(summary: dict) -> str:
    rows = [
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | CPU vs empty |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = {
        "sipauth IssueChallenge": "empty IssueChallenge",
        "sipauth VerifyResponse REJECT": "empty VerifyResponse (h2load)",
        "sipauth VerifyResponse ACCEPT": "empty VerifyResponse (python)",
        "sipauth ACCEPT, proxies' port": "empty VerifyResponse (python)",
        "sipauth ACCEPT at half load": "empty at the same rate",
    }
    grpc_results = summary["grpc"]
    for name, value in grpc_results.items():
        ratio = _ratio(value["cpu_us_per_request"], grpc_results.get(base.get(name, ""), {}).get("cpu_us_per_request"))
        label = name if name.endswith(f"({value['generator']})") else f"{name} ({value['generator']})"
        rows.append(
            f"| {label} | {value['rps']:.0f} | {value['p50_ms']:.2f} | {value['p99_ms']:.2f} | "
            f"{value['cpu_us_per_request'] or 0:.0f} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    sip = summary.get("sip")
    if sip:
        rows += [
            "",
            "| SIP REGISTER 401→200 via Kamailio | REGISTER/s | failed | Kamailio CPU ms/REG | server CPU ms/REG |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, value in sip["runs"].items():
            rows.append(
                f"| {name} | {value['rate']:.0f} | {value['failed']} | {value['kamailio_cpu_ms']:.3f} | "
                f"{value['server_cpu_ms'] if value['server_cpu_ms'] is not None else '-'} |"
            )
    headline = [
        "",
        "| figure | measured | target |",
        "|---|---:|---:|",
        f"| IssueChallenge server CPU vs empty handler | {summary['challenge_cpu_ratio']}x | <= 1.2x |",
        f"| VerifyResponse ACCEPT server CPU vs empty handler | {summary['verify_accept_cpu_ratio']}x | <= 1.5x |",
        f"| (ACCEPT on the proxies' port vs the empty grpc.aio handler) | "
        f"{summary['verify_accept_proxy_port_cpu_ratio']}x | - |",
        f"| 2 workers / 1 worker throughput | {summary['workers_scaling']}x | >= 1.7x |",
        f"| p99 at half of max ACCEPT throughput | {summary['p99_ms_at_half_load']} ms | < 5 ms |",
        f"| SIP REGISTER/s, Kamailio + sipauth vs two-call floor | {summary['sip_register_ratio_vs_floor']}x | >= 2x |",
        f"| Kamailio CPU per transaction with sipauth | {summary['kamailio_cpu_ms_per_transaction']} ms | <= 0.35 ms |",
    ]
    table = "\n".join(rows + headline)
    print(table)
    return table


def plot(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, values in bench.latencies.items():
        if not values or name.startswith(("1 worker", "2 workers")):
            continue
        ordered = sorted(values)
        n = len(ordered)
        qs = [i / (n - 1) * 100 if n > 1 else 100 for i in range(n)]
        step = max(1, n // 2000)
        ax.plot([ordered[i] / 1000 for i in range(0, n, step)], qs[::step], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("percentile")
    ax.set_title("sipauth vs an empty gRPC handler: latency distribution per scenario")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement, over all its rounds")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per gRPC-level comparison")
    parser.add_argument("--no-sip", action="store_true", help="skip the SIP level (Kamailio + SIPp)")
    parser.add_argument("--sip-only", action="store_true", help="only the SIP level (no table of targets is written)")
    parser.add_argument("--quick", action="store_true", help="short phases, for trying the bench itself")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sipauth-bench-") as tmp:
        bench = Bench(Path(tmp), args.duration, args.quick, max(1, args.rounds))
        if args.sip_only:
            from bench.sip import run_sip

            print(json.dumps(run_sip(bench), indent=2))
            return 0
        facts = run_grpc(bench)
        sip = None
        if not args.no_sip:
            from bench.sip import run_sip

            sip = run_sip(bench)
        summary = summarise(bench, facts, sip)
        summary["bench_seconds"] = round(time.monotonic() - started, 1)
        table = print_table(summary)
        (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
        (RESULTS / "latest.md").write_text(table + "\n")
        plot(bench, RESULTS / "latency.png")
    print(f"wrote bench/results/latest.json, latest.md and latency.png in {time.monotonic() - started:.0f} s")
    return 0
