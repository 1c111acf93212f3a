"""The use case: IssueChallenge and VerifyResponse over digest, nonces, replay and credentials.

No gRPC here: plain value objects in, plain value objects out. The gRPC
servicer translates; tests and other front ends call this directly.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .credentials import CredentialSource, Identity, UserRecord
from .digest import (
    Algorithm,
    Credentials,
    DigestError,
    Limits,
    UnsupportedAlgorithm,
    build_authentication_info,
    challenge_template,
    digests_equal,
    parse_credentials,
    request_digest,
    response_auth,
    uris_match,
)
from .errors import InvalidRequest
from .lockout import Lockout, LockoutState
from .nonce import NonceForged, NonceKeyring, OpenedNonce
from .policy import RealmPolicy
from .replay import ReplayGuard, ReplayMode
from .replay.redis import RedisReplayGuard

__all__ = [
    "Authenticator",
    "Challenge",
    "ChallengeKind",
    "ChallengeRequest",
    "Decision",
    "RequestLimits",
    "Verdict",
    "VerifyRequest",
]

# RFC 3261 section 25.1: Method = INVITEm / ... / extension-method; extension-method = token
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]{1,32}")
# RFC 3261 section 22.1: ACK and CANCEL cannot be challenged.
_UNCHALLENGEABLE = frozenset({"ACK", "CANCEL"})


class ChallengeKind(enum.Enum):
    """Which pair of headers carries the exchange."""

    WWW = (401, "WWW-Authenticate")
    PROXY = (407, "Proxy-Authenticate")

    @property
    def status_code(self) -> int:
        """401 or 407."""
        return self.value[0]

    @property
    def header_name(self) -> str:
        """WWW-Authenticate or Proxy-Authenticate."""
        return self.value[1]


class Verdict(enum.Enum):
    """The decision on one set of credentials (mirrors sipauth.v1.Verdict)."""

    ACCEPT = "accept"
    REJECT = "reject"
    STALE = "stale"
    INVALID = "invalid"
    LOCKED = "locked"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on what a proxy may send; larger input is refused, never processed."""

    header: Limits = field(default_factory=Limits)
    max_request_uri_length: int = 2048
    max_call_id_length: int = 1024
    max_source_ip_length: int = 64
    max_realm_length: int = 256
    max_body_bytes: int = 1 << 20
    #: Most challenges one IssueChallenge may mint.
    max_challenge_count: int = 64


@dataclass(frozen=True, slots=True)
class ChallengeRequest:
    """What a proxy knows about a request it wants challenged."""

    method: str
    realm: str = ""
    kind: ChallengeKind = ChallengeKind.WWW
    request_uri: str = ""
    source_ip: str = ""
    call_id: str = ""
    #: Offer these, in this order; empty means the realm's configured order.
    algorithms: tuple[Algorithm, ...] = ()
    #: How many independent challenges (0 means 1); more than one only where they may be pooled.
    count: int = 1


@dataclass(frozen=True, slots=True)
class Challenge:
    """A ready-to-send 401/407: one header value per offered algorithm."""

    status_code: int
    header_name: str
    header_values: tuple[str, ...]
    nonce_ttl_seconds: int
    #: Further challenges (each one fresh nonce per algorithm) when several were asked for.
    additional: tuple[tuple[str, ...], ...] = ()
    #: The nonces are bound to no per-request fact: a client may keep them for later requests.
    poolable: bool = False


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """A request carrying (or lacking) credentials."""

    method: str
    request_uri: str
    authorization: str = ""
    body: bytes = b""
    realm: str = ""
    kind: ChallengeKind = ChallengeKind.WWW
    source_ip: str = ""
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and everything the proxy needs to act on it."""

    verdict: Verdict
    reason: str = ""
    status_code: int = 0
    username: str = ""
    challenge: Challenge | None = None
    authentication_info: str = ""
    identity: Identity | None = None
    #: The algorithm of the answer, when it could be parsed (for metrics and audit).
    algorithm: Algorithm | None = None
    realm: str = ""
    #: The true reason, for the audit log only (``bad_credentials`` hides
    #: ``unknown_user`` / ``wrong_password`` / ``no_ha1_for_algorithm`` from callers).
    detail: str = ""
    #: The user named in the credentials (also on refusals), for the audit log only.
    claimed_user: str = ""


@dataclass
class _Context:
    request: VerifyRequest
    policy: RealmPolicy
    credentials: Credentials | None = None
    #: The account name once known (after userhash resolution).
    username: str = ""


def _dummy_key() -> bytes:
    return os.urandom(32)


@dataclass
class Authenticator:
    """Issues challenges and verifies answers. Safe to share across concurrent calls."""

    default_realm: str
    policies: Mapping[str, RealmPolicy]
    keyring: NonceKeyring
    replay: ReplayGuard
    credentials: CredentialSource
    limits: RequestLimits = field(default_factory=RequestLimits)
    clock: Callable[[], float] = time.time
    #: Keys the stand-in HA1 of unknown users, so they cost the same work as known ones.
    dummy_key: bytes = field(default_factory=_dummy_key, repr=False)
    lockout: Lockout | None = None
    #: The credential source's no-I/O cache read, and whether ACCEPTs can take the
    #: one-round-trip path (decided once: the parts do not change).
    _peek: Callable[[str, str], UserRecord | None] | None = field(init=False, default=None, repr=False)
    _one_trip: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        if self.default_realm not in self.policies:
            raise ValueError(f"no policy for the default realm {self.default_realm!r}")
        self._peek = getattr(self.credentials, "peek", None)
        self._one_trip = self._peek is not None and self.lockout is not None and self.lockout.reads_beside(self.replay)

    # -- request checks ------------------------------------------------------

    def _policy_for(self, realm: str) -> RealmPolicy:
        name = realm or self.default_realm
        if len(name) > self.limits.max_realm_length:
            raise InvalidRequest("realm is too long")
        policy = self.policies.get(name)
        if policy is None:
            raise InvalidRequest(f"realm {name[:64]!r} is not configured")
        return policy

    def _check_common(self, method: str, request_uri: str, source_ip: str, call_id: str) -> None:
        if not method:
            raise InvalidRequest("method is required")
        if not _METHOD.fullmatch(method):
            raise InvalidRequest("method is not a SIP method token")
        if len(request_uri) > self.limits.max_request_uri_length:
            raise InvalidRequest("request_uri is too long")
        if len(source_ip) > self.limits.max_source_ip_length:
            raise InvalidRequest("source_ip is too long")
        if len(call_id) > self.limits.max_call_id_length:
            raise InvalidRequest("call_id is too long")

    def _check_bindings(self, policy: RealmPolicy, source_ip: str, call_id: str) -> None:
        if policy.bind_source_ip and not source_ip:
            raise InvalidRequest(f"realm {policy.realm!r} binds nonces to source_ip: it is required")
        if policy.bind_call_id and not call_id:
            raise InvalidRequest(f"realm {policy.realm!r} binds nonces to call_id: it is required")

    # -- IssueChallenge ------------------------------------------------------

    def issue_challenge(self, request: ChallengeRequest) -> Challenge:
        """Build a challenge. Pure computation: no I/O, nothing stored."""
        self._check_common(request.method, request.request_uri, request.source_ip, request.call_id)
        if request.method.upper() in _UNCHALLENGEABLE:
            raise InvalidRequest(f"{request.method.upper()} cannot be challenged (RFC 3261 section 22.1)")
        policy = self._policy_for(request.realm)
        self._check_bindings(policy, request.source_ip, request.call_id)
        if request.algorithms:
            if len(set(request.algorithms)) != len(request.algorithms):
                raise InvalidRequest("an algorithm is requested twice")
            algorithms = tuple(a for a in request.algorithms if a in policy.algorithms)
            if not algorithms:
                raise InvalidRequest(f"none of the requested algorithms is allowed in realm {policy.realm!r}")
        else:
            algorithms = policy.algorithms
        if not 0 <= request.count <= self.limits.max_challenge_count:
            raise InvalidRequest(f"count must be between 1 and {self.limits.max_challenge_count}")
        challenge = self._challenge(policy, request.kind, request.source_ip, request.call_id, algorithms, stale=False)
        poolable = not (policy.bind_source_ip or policy.bind_call_id)
        if not poolable:
            return challenge
        more = tuple(
            self._challenge(policy, request.kind, "", "", algorithms, stale=False).header_values
            for _ in range(request.count - 1)
        )
        return Challenge(
            challenge.status_code,
            challenge.header_name,
            challenge.header_values,
            challenge.nonce_ttl_seconds,
            additional=more,
            poolable=True,
        )

    def _challenge(
        self,
        policy: RealmPolicy,
        kind: ChallengeKind,
        source_ip: str,
        call_id: str,
        algorithms: Sequence[Algorithm],
        *,
        stale: bool,
    ) -> Challenge:
        now = self.clock()
        binding = policy.binding(source_ip, call_id)
        mint = self.keyring.mint
        values = []
        for algorithm in algorithms:
            # A nonce is base64url: nothing in it needs escaping inside the quotes.
            before, after = challenge_template(
                realm=policy.realm, algorithm=algorithm, qop=policy.qop, stale=stale, userhash=policy.userhash
            )
            values.append(before + mint(binding, algorithm, now=now, ttl=policy.nonce_ttl) + after)
        return Challenge(kind.status_code, kind.header_name, tuple(values), policy.nonce_ttl)

    # -- VerifyResponse ------------------------------------------------------

    def _refuse(
        self, ctx: _Context, verdict: Verdict, reason: str, *, username: str = "", detail: str = ""
    ) -> Decision:
        request = ctx.request
        policy = ctx.policy
        if verdict is Verdict.INVALID:
            status = 400
        elif verdict in (Verdict.FORBIDDEN, Verdict.LOCKED):
            status = 403
        else:
            status = request.kind.status_code
        challenge = None
        if verdict in (Verdict.REJECT, Verdict.STALE, Verdict.INVALID):
            challenge = self._challenge(
                policy,
                request.kind,
                request.source_ip,
                request.call_id,
                policy.algorithms,
                stale=verdict is Verdict.STALE,
            )
        algorithm = ctx.credentials.algorithm if ctx.credentials is not None else None
        return Decision(
            verdict=verdict,
            reason=reason,
            status_code=status,
            username=username,
            challenge=challenge,
            algorithm=algorithm,
            realm=policy.realm,
            detail=detail or reason,
            claimed_user=ctx.username,
        )

    def _stand_in_ha1(self, credentials: Credentials, realm: str) -> str:
        """A per-user constant HA1 for unknown users: same work, never matches a real answer."""
        mac = hmac.new(self.dummy_key, f"{credentials.username}\0{realm}".encode(), hashlib.sha256).digest()
        return credentials.algorithm.h(mac)

    def _matches(
        self, record: UserRecord | None, credentials: Credentials, request: VerifyRequest, realm: str, username: str
    ) -> bool:
        ha1 = None if record is None else record.ha1_for(credentials.algorithm, realm, username)
        expected = request_digest(
            credentials.algorithm,
            ha1 if ha1 is not None else self._stand_in_ha1(credentials, realm),
            nonce=credentials.nonce,
            method=request.method,
            uri=credentials.uri,
            qop=credentials.qop,
            nc_value=credentials.nc_value,
            cnonce=credentials.cnonce,
            body=request.body,
        )
        return digests_equal(expected, credentials.response) and ha1 is not None

    async def verify(self, request: VerifyRequest) -> Decision:
        """Decide on the credentials in ``request``.

        Raises InvalidRequest for a request the proxy should not have sent and
        BackendUnavailable when the decision needs a backend that is down.
        """
        self._check_common(request.method, request.request_uri, request.source_ip, request.call_id)
        if not request.request_uri:
            raise InvalidRequest("request_uri is required")
        if len(request.body) > self.limits.max_body_bytes:
            raise InvalidRequest("body is larger than the configured limit")
        policy = self._policy_for(request.realm)
        self._check_bindings(policy, request.source_ip, request.call_id)
        ctx = _Context(request, policy)

        if not request.authorization.strip():
            return self._refuse(ctx, Verdict.REJECT, "credentials_missing")
        try:
            credentials = parse_credentials(request.authorization, self.limits.header)
        except UnsupportedAlgorithm:
            return self._refuse(ctx, Verdict.REJECT, "algorithm_not_offered")
        except DigestError:
            return self._refuse(ctx, Verdict.INVALID, "malformed")
        ctx.credentials = credentials

        if credentials.realm != policy.realm:
            return self._refuse(ctx, Verdict.REJECT, "realm_mismatch")
        if credentials.algorithm not in policy.algorithms:
            return self._refuse(ctx, Verdict.REJECT, "algorithm_not_offered")
        if credentials.qop is None and not policy.allow_qop_less:
            return self._refuse(ctx, Verdict.REJECT, "qop_missing")
        if credentials.qop is not None and credentials.qop not in policy.qop:
            return self._refuse(ctx, Verdict.REJECT, "qop_not_offered")
        if policy.verify_uri and not uris_match(credentials.uri, request.request_uri):
            return self._refuse(ctx, Verdict.REJECT, "uri_mismatch")
        try:
            nonce = self.keyring.open(credentials.nonce, policy.binding(request.source_ip, request.call_id))
        except NonceForged:
            return self._refuse(ctx, Verdict.REJECT, "nonce_forged")
        if nonce.algorithm is not credentials.algorithm:
            # RFC 8760 section 3: a nonce offered with SHA-256 must not be answered with MD5.
            return self._refuse(ctx, Verdict.REJECT, "algorithm_not_offered")
        return await self._decide(ctx, credentials, nonce)

    async def _decide(self, ctx: _Context, credentials: Credentials, nonce: OpenedNonce) -> Decision:
        """The part of verify that needs the account: lockout, digest, account state, replay."""
        request, policy = ctx.request, ctx.policy
        username = credentials.username
        if credentials.userhash:
            resolved = await self._resolve_userhash(credentials, policy)
            if resolved is None:
                return self._refuse(ctx, Verdict.REJECT, "bad_credentials", detail="unknown_userhash")
            username = resolved
        ctx.username = username

        fast = await self._decide_in_one_trip(ctx, credentials, nonce, username)
        if fast is not None:
            return fast
        lock_state = None
        if self.lockout is not None:
            lock_state = await self.lockout.check(policy.realm, username, request.source_ip)
            if lock_state is not None and lock_state.locked(self.clock()):
                return self._refuse(ctx, Verdict.LOCKED, "locked_out")

        record = await self.credentials.lookup(username, policy.realm)
        matched = self._matches(record, credentials, request, policy.realm, username)
        if not matched:
            # The password may have changed since a cached copy: look once more, past any cache.
            record = await self.credentials.lookup(username, policy.realm, refresh=True)
            matched = self._matches(record, credentials, request, policy.realm, username)
        if not matched or record is None:
            if self.lockout is not None:
                await self.lockout.failed(policy.realm, username, request.source_ip)
            return self._refuse(ctx, Verdict.REJECT, "bad_credentials", detail=_why_not(record, credentials, policy))
        if record.refusal is not None:
            return self._refuse(ctx, Verdict.FORBIDDEN, record.refusal, username=username)

        now = self.clock()
        if nonce.expired(now):
            return self._refuse(ctx, Verdict.STALE, "nonce_expired")
        fresh = await self.replay.consume(nonce.replay_id, _replay_nc(policy, credentials), nonce.remaining(now))
        return await self._finish(ctx, credentials, record, lock_state=lock_state, fresh=fresh, now=now)

    async def _finish(
        self,
        ctx: _Context,
        credentials: Credentials,
        record: UserRecord,
        *,
        lock_state: LockoutState | None,
        fresh: bool,
        now: float,
    ) -> Decision:
        """After a correct answer's replay check: STALE for a replay, else reset the user's failures and ACCEPT."""
        if not fresh:
            return self._refuse(ctx, Verdict.STALE, "nonce_replayed")
        if self.lockout is not None and lock_state is not None and lock_state.has_failures:
            await self.lockout.succeeded(ctx.policy.realm, ctx.username, ctx.request.source_ip)
        return self._accept(ctx, credentials, record, now)

    async def _decide_in_one_trip(
        self, ctx: _Context, credentials: Credentials, nonce: OpenedNonce, username: str
    ) -> Decision | None:
        """The common case in one Redis round trip: a cached user, a correct answer, a live nonce.

        The lockout state is read in the same round trip as the replay consume,
        so the verdict is the one :meth:`_decide` reaches (LOCKED before
        anything else); only the nonce of a locked user's correct answer is
        spent. None when the case does not apply (cache miss, wrong answer,
        refused account, expired nonce, no shared Redis): :meth:`_decide` goes
        the long way.
        """
        if not self._one_trip or self._peek is None:
            return None
        lockout, replay = self.lockout, self.replay
        assert lockout is not None
        assert isinstance(replay, RedisReplayGuard)
        request, policy = ctx.request, ctx.policy
        record = self._peek(username, policy.realm)
        now = self.clock()
        if (
            record is None
            or record.refusal is not None
            or nonce.expired(now)
            or not self._matches(record, credentials, request, policy.realm, username)
        ):
            return None
        nc = _replay_nc(policy, credentials)
        remaining = nonce.remaining(now)

        async def consume(keys: Sequence[str], fields: Sequence[str]) -> tuple[bool, list[object]]:
            return await replay.consume_reading(nonce.replay_id, nc, remaining, keys, fields)

        lock_state, fresh = await lockout.check_consuming(policy.realm, username, request.source_ip, consume)
        if lock_state is not None and lock_state.locked(self.clock()):
            return self._refuse(ctx, Verdict.LOCKED, "locked_out")
        return await self._finish(ctx, credentials, record, lock_state=lock_state, fresh=fresh, now=now)

    async def _resolve_userhash(self, credentials: Credentials, policy: RealmPolicy) -> str | None:
        """The account behind H(username ":" realm), where userhash is offered and the source can tell."""
        if not policy.userhash:
            return None
        resolve = getattr(self.credentials, "resolve_userhash", None)
        if resolve is None:
            return None
        name: str | None = await resolve(credentials.username.lower(), credentials.algorithm, policy.realm)
        return name

    def _accept(self, ctx: _Context, credentials: Credentials, record: UserRecord, now: float) -> Decision:
        request, policy = ctx.request, ctx.policy
        ha1 = record.ha1_for(credentials.algorithm, policy.realm, ctx.username)
        assert ha1 is not None  # _matches succeeded with it
        rspauth = response_auth(
            credentials.algorithm,
            ha1,
            nonce=credentials.nonce,
            uri=credentials.uri,
            qop=credentials.qop,
            nc_value=credentials.nc_value,
            cnonce=credentials.cnonce,
        )
        nextnonce = self.keyring.mint(
            policy.binding(request.source_ip, request.call_id), credentials.algorithm, now=now, ttl=policy.nonce_ttl
        )
        info = build_authentication_info(
            nextnonce=nextnonce,
            qop=credentials.qop,
            rspauth=rspauth,
            cnonce=credentials.cnonce,
            nc_value=credentials.nc_value,
        )
        return Decision(
            verdict=Verdict.ACCEPT,
            username=ctx.username,
            claimed_user=ctx.username,
            authentication_info=info,
            identity=record.identity,
            algorithm=credentials.algorithm,
            realm=policy.realm,
        )


def _why_not(record: UserRecord | None, credentials: Credentials, policy: RealmPolicy) -> str:
    """The true reason behind bad_credentials, for the audit log only."""
    if record is None:
        return "unknown_user"
    if record.ha1_for(credentials.algorithm, policy.realm, credentials.username) is None:
        return "no_ha1_for_algorithm"
    return "wrong_password"


def _replay_nc(policy: RealmPolicy, credentials: Credentials) -> int | None:
    """The nc the replay guard records, or None for a single-use answer.

    An answer without qop has no nc in its digest: any nc attached to it is
    meaningless, so it is always single-use (else copies with nc=2, 3... would
    each be fresh).
    """
    if policy.replay_mode is ReplayMode.ONE_TIME or credentials.qop is None:
        return None
    return credentials.nc
