"""Prometheus metrics, defined once. No usernames or IPs as label values (cardinality, privacy).

Worker processes share one scrape endpoint through prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), set up by the supervisor.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BACKEND_ERRORS",
    "BACKEND_LATENCY",
    "CACHE",
    "HEALTH_SERVING",
    "INFLIGHT",
    "LOCKOUTS",
    "REPLAY_FALLBACK_ACTIVE",
    "REPLAY_FALLBACK_DECISIONS",
    "REQUESTS",
    "REQUEST_LATENCY",
]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "sipauth_requests",
    "RPCs answered, by outcome. verdict is 'fault' and reason the gRPC status for calls that got no verdict.",
    ["rpc", "verdict", "reason", "realm", "algorithm"],
)
REQUEST_LATENCY = Histogram(
    "sipauth_request_duration_seconds", "Time to answer an RPC, in seconds.", ["rpc"], buckets=_LATENCY_BUCKETS
)
INFLIGHT = Gauge("sipauth_inflight_requests", "RPCs being answered now.", multiprocess_mode="livesum")
BACKEND_LATENCY = Histogram(
    "sipauth_backend_duration_seconds",
    "Time of calls to Redis and LDAP, in seconds.",
    ["backend", "operation"],
    buckets=_LATENCY_BUCKETS,
)
BACKEND_ERRORS = Counter("sipauth_backend_errors", "Failed calls to Redis and LDAP.", ["backend", "operation"])
CACHE = Counter(
    "sipauth_credentials_cache", "Credential cache lookups by result (hit, miss, stale, refresh).", ["result"]
)
LOCKOUTS = Counter("sipauth_lockouts", "Locks imposed by brute-force protection, by scope.", ["scope"])
HEALTH_SERVING = Gauge(
    "sipauth_health_serving", "1 while the service reports SERVING, 0 while NOT_SERVING.", multiprocess_mode="livemin"
)
REPLAY_FALLBACK_DECISIONS = Counter(
    "sipauth_replay_fallback_decisions",
    "Replay checks decided from this replica's memory because Redis was unreachable (failure_policy local_fallback).",
)
REPLAY_FALLBACK_ACTIVE = Gauge(
    "sipauth_replay_fallback_active",
    "1 while replays are decided from this replica's memory (Redis unreachable, failure_policy local_fallback).",
    multiprocess_mode="livemax",
)
