r"""The fuzz targets, and the properties each of them checks on every input.

A target takes the raw bytes a fuzzer generates, decodes them into a call of
the code under test, and raises :class:`FuzzFailure` when a property is
broken. Any other exception escaping a target is a crash of the code under
test. The targets do not depend on atheris: ``test_fuzz_smoke.py`` runs them
in the ordinary suite and ``python -m tests.fuzz`` runs them under libFuzzer.

``parser``: :func:`sipauth.digest.parse_credentials`

* nothing but :class:`~sipauth.digest.DigestError` escapes;
* the same input gives the same result, or the same error, twice;
* a parsed result keeps the grammar's promises: the mandatory parameters are
  there, ``response`` is 32 or 64 lower-case hex digits, qop comes with
  cnonce and an 8-hex-digit ``nc`` >= 1, names are lower case, no value holds
  CR, LF or NUL, the limits hold;
* written back with every value as a quoted-string, it parses to the same
  credentials.

``verify``: :meth:`sipauth.authenticator.Authenticator.verify`, in process
(users file, in-memory replay guard, nonce keyring, a fixed clock). Three
inputs in four start from a genuine answer: a challenge from
``issue_challenge`` answered by the independent client in ``sipauth_client``,
then up to five mutations of its parameters, its bytes and the request around
it (method, Request-URI, body, realm, source IP, Call-ID, clock). The fourth
is a raw header, in which ``@N@`` becomes a genuine nonce.

* the outcome is a :class:`~sipauth.authenticator.Decision` or
  :class:`~sipauth.errors.InvalidRequest`, nothing else;
* every decision is well formed: status code, challenge and reason as the API
  documents for its verdict;
* ACCEPT only for a genuine answer of an account that may log in, reaching
  the server with the same meaning: every parameter that enters the digest
  unchanged (case of names, quoting, order, spacing and ``username*`` may
  vary), the same method and realm, the same body under ``auth-int``, the same
  bound source IP and Call-ID, a Request-URI equal to the digest ``uri`` under
  RFC 3261 section 19.1.4 (decided by a table of known-equivalent spellings,
  not by the code under test), a nonce minted by a configured key and not
  expired. Any other ACCEPT is a forgery;
* an unmodified genuine answer gets exactly the verdict its account deserves
  (so the target keeps reaching ACCEPT);
* an accepted request sent again is refused, and so is an accepted answer
  without qop sent again with a higher ``nc`` attached (RFC 2069 digests do
  not cover ``nc``).

A failure listed in :data:`KNOWN_ISSUES` may be tolerated on request
(``VerifyTarget(tolerated=...)``, ``make fuzz FUZZ_TOLERATE=...``): it is then
counted and printed instead of raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from sipauth.authenticator import (
    Authenticator,
    ChallengeKind,
    ChallengeRequest,
    Decision,
    Verdict,
    VerifyRequest,
)
from sipauth.credentials import UsersFile
from sipauth.digest import Algorithm, Credentials, DigestError, Limits, parse_credentials
from sipauth.errors import InvalidRequest
from sipauth.nonce import NonceBinding, NonceKeyring
from sipauth.policy import RealmPolicy
from sipauth.replay import MemoryReplayGuard, ReplayMode
from sipauth_client import ChallengeParams, answer_challenge, parse_challenge, verify_rspauth
from tests.unit.hostile import HOSTILE

__all__ = [
    "KNOWN_ISSUES",
    "TARGETS",
    "FuzzFailure",
    "ParserTarget",
    "VerifyTarget",
    "dictionary",
    "seeds",
]

T = TypeVar("T")


class FuzzFailure(AssertionError):
    """A property of the code under test does not hold for this input."""


#: Failures found and reported but not fixed yet, which a run may be told to tolerate (counted, not hidden).
#: Reported issues not yet fixed, by name (none open: an answer without qop re-sent with another nc
#: attached, once accepted, is now refused: its digest covers no nc, so it is single-use).
KNOWN_ISSUES: dict[str, str] = {}


class _Reader:
    """Consumes fuzzer bytes as choices; past the end every read is zero."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def chunk(self, limit: int) -> bytes:
        size = self.byte() % (limit + 1)
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def text(self, limit: int) -> str:
        return self.chunk(limit).decode("utf-8", "replace")

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out


def _decode_header(mode: int, raw: bytes) -> str:
    """Bytes -> header text: Latin-1 (every byte one character) or UTF-8 keeping bad bytes as lone surrogates."""
    return raw.decode("latin-1") if mode % 2 == 0 else raw.decode("utf-8", "surrogateescape")


def _encode_header(text: str) -> tuple[int, bytes]:
    """The inverse of :func:`_decode_header`: (mode, bytes)."""
    try:
        return 0, text.encode("latin-1")
    except UnicodeEncodeError:
        return 1, text.encode("utf-8", "surrogateescape")


# -- parser -------------------------------------------------------------------

_SMALL_LIMITS = Limits(max_header_length=300, max_parameters=6, max_value_length=40)
_LOWER_HEX = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")
_NC = re.compile(r"[0-9A-Fa-f]{8}")
_NAME = re.compile(r"[a-z0-9\-.!%*_+`'~]+")
_DIGEST_FIELDS = ("username", "realm", "nonce", "uri", "response", "algorithm", "qop", "userhash")


def _quoted(value: str) -> str:
    """A quoted-string holding ``value``: every character outside qdtext as a quoted-pair (RFC 3261 section 25.1)."""
    out = []
    for ch in value:
        if ch in '"\\' or (ch < " " and ch != "\t") or ch == "\x7f":
            out.append("\\")
        out.append(ch)
    return '"' + "".join(out) + '"'


def _check_credentials(header: str, limits: Limits, creds: Credentials) -> None:
    """The promises a parsed result keeps (see the module docstring)."""

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise FuzzFailure(f"parsed credentials break an invariant: {what}")

    params = creds.params
    require(len(header) <= limits.max_header_length, "longer than the header limit")
    require("\x00" not in header, "a NUL was accepted")
    require(all(name in params for name in ("realm", "nonce", "uri", "response")), "a mandatory parameter is missing")
    require(("username" in params) != ("username*" in params), "not exactly one of username and username*")
    require(len(params) <= limits.max_parameters, "more parameters than the limit")
    require(all(_NAME.fullmatch(name) for name in params), "a parameter name is not a lower-case token")
    require(all(len(value) <= limits.max_value_length for value in params.values()), "a value exceeds the limit")
    values = (*params.values(), creds.username)
    require(not any(ch in value for value in values for ch in "\r\n\x00"), "a value holds CR, LF or NUL")
    require(creds.realm == params["realm"] and creds.nonce == params["nonce"], "realm or nonce differs from the header")
    require(creds.uri == params["uri"], "uri differs from the header")
    if "username" in params:
        require(creds.username == params["username"], "username differs from the header")
    require(_LOWER_HEX.fullmatch(creds.response) is not None, "response is not 32 or 64 lower-case hex digits")
    require(creds.response == params["response"].lower(), "response differs from the header")
    require(isinstance(creds.algorithm, Algorithm), "algorithm is not an Algorithm")
    require(creds.algorithm_explicit == ("algorithm" in params), "algorithm_explicit is wrong")
    if not creds.algorithm_explicit:
        require(creds.algorithm is Algorithm.MD5, "an absent algorithm is not MD5")
    require(creds.nc_value == params.get("nc") and creds.cnonce == params.get("cnonce"), "nc or cnonce differs")
    if creds.qop is not None:
        require(creds.qop != "" and creds.qop == creds.qop.lower(), "qop is empty or not lower case")
        require(creds.cnonce is not None and creds.nc is not None, "qop without cnonce and nc")
    if creds.nc_value is not None:
        require(_NC.fullmatch(creds.nc_value) is not None, "nc is not 8 hex digits")
        require(creds.nc == int(creds.nc_value, 16) and creds.nc >= 1, "nc's number is wrong")
    else:
        require(creds.nc is None, "an nc number without an nc")
    if creds.cnonce is not None:
        require(creds.cnonce != "", "cnonce is empty")
    require(creds.userhash == (params.get("userhash", "false").lower() == "true"), "userhash is wrong")


class ParserTarget:
    """Target ``parser``: first byte = text decoding (bit 0) and limits (bit 1); the rest is the header."""

    name = "parser"

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        limits = _SMALL_LIMITS if data[0] & 2 else Limits()
        header = _decode_header(data[0], data[1:])
        first = self._parse(header, limits)
        second = self._parse(header, limits)
        if first != second:
            raise FuzzFailure(f"the same header parsed differently twice: {first!r} then {second!r}")
        if isinstance(first, Credentials):
            self.outcomes["parsed"] += 1
            _check_credentials(header, limits, first)
            canonical = "Digest " + ", ".join(f"{name}={_quoted(value)}" for name, value in first.params.items())
            if len(canonical) <= limits.max_header_length:
                again = self._parse(canonical, limits)
                if again != first:
                    raise FuzzFailure(f"re-quoted credentials parse differently: {canonical!r} -> {again!r}")
        else:
            self.outcomes[first[0]] += 1

    @staticmethod
    def _parse(header: str, limits: Limits) -> Credentials | tuple[str, str]:
        try:
            return parse_credentials(header, limits)
        except DigestError as exc:
            return type(exc).__name__, str(exc)


# -- verify -------------------------------------------------------------------

_DEFAULT = "example.test"
_BOUND = "bound.test"
_BASE_TIME = 1_700_000_000.0
_KEY_CURRENT = b"current nonce key for fuzzing, 32+ bytes"
_KEY_PREVIOUS = b"previous nonce key, still configured for rotation"
_KEY_ALIEN = b"a key no replica of this deployment has configured"
_POLICIES = {
    # Lenient: every hash and a -sess form, both qops and RFC 2069 answers, nc mode.
    _DEFAULT: RealmPolicy(
        _DEFAULT,
        algorithms=(Algorithm.SHA_256, Algorithm.SHA_512_256, Algorithm.MD5, Algorithm.MD5_SESS),
        qop=("auth", "auth-int"),
        allow_qop_less=True,
    ),
    # Strict: no MD5, nonces bound to source IP and Call-ID, one-time nonces.
    _BOUND: RealmPolicy(
        _BOUND,
        algorithms=(Algorithm.SHA_256, Algorithm.SHA_512_256_SESS),
        bind_source_ip=True,
        bind_call_id=True,
        replay_mode=ReplayMode.ONE_TIME,
    ),
}
_USERS_YAML = (
    "users:\n"
    "  alice: {password: wonderland, display_name: Alice}\n"
    "  'José': {password: 'contraseña'}\n"
    "  carol: {password: secret, disabled: true}\n"
    f"  dave: {{ha1: {{MD5: {hashlib.md5(b'dave:example.test:pass', usedforsecurity=False).hexdigest()}}}}}\n"
)


@dataclasses.dataclass(frozen=True)
class _Account:
    username: str
    password: str
    #: Verdict an unmodified genuine answer deserves, given (realm, algorithm).
    deserves: Callable[[str, Algorithm], Verdict]


_ACCOUNTS = (
    _Account("alice", "wonderland", lambda realm, algorithm: Verdict.ACCEPT),
    _Account("José", "contraseña", lambda realm, algorithm: Verdict.ACCEPT),
    # Only an MD5 HA1, stored for the default realm.
    _Account(
        "dave",
        "pass",
        lambda realm, algorithm: (
            Verdict.ACCEPT if realm == _DEFAULT and algorithm.base is Algorithm.MD5 else Verdict.REJECT
        ),
    ),
    _Account("carol", "secret", lambda realm, algorithm: Verdict.FORBIDDEN),
    _Account("alice", "not her password", lambda realm, algorithm: Verdict.REJECT),
    _Account("nobody", "wonderland", lambda realm, algorithm: Verdict.REJECT),
)
_METHODS = ("REGISTER", "INVITE", "MESSAGE", "BYE", "SUBSCRIBE", "OPTIONS", "invite")
_ODD_METHODS = ("", "ACK", "IN VITE", "X" * 40, "INVITE\r\n", "ÍNVITE")
#: Request-URIs; those sharing a class are equal under RFC 3261 section 19.1.4 (its own examples).
_URIS = (
    ("sip:example.test", 0),
    ("SIP:Example.TEST", 0),
    ("sip:alice@example.test;transport=tcp", 1),
    ("sip:alice@EXAMPLE.test;Transport=TCP", 1),
    ("sip:alice@example.test", 2),
    ("sip:%61lice@example.test", 2),
    ("sip:Alice@example.test", 3),
    ("sip:example.test:5060", 4),
    ("sips:[2001:db8::1]:5061", 5),
    ("tel:+15551234", 6),
    ("sip:bob@bound.test?subject=x", 7),
)
_URI_CLASS = dict(_URIS)
_IPS = ("192.0.2.1", "2001:db8::1", "198.51.100.7")
_CALL_IDS = ("a84b4c76e66710@pc33.example.test", "c2", "")
_REALM_FIELDS = ("", _DEFAULT, _BOUND, "unknown.test", "EXAMPLE.TEST", "r" * 300)
_PARAM_NAMES = (
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "qop",
    "nc",
    "cnonce",
    "opaque",
    "userhash",
    "username*",
    "x-ext",
)
_INTERESTING = (
    "",
    "MD5",
    "md5-SESS",
    "SHA-256",
    "SHA-512-256-sess",
    "SHA-1",
    "auth",
    "auth-int",
    "AUTH",
    "00000001",
    "00000002",
    "0000000A",
    "FFFFFFFF",
    "true",
    "false",
    _DEFAULT,
    _BOUND,
    "sip:example.test",
    "sip:%61lice@example.test",
    "UTF-8''alice",
    "UTF-8''Jos%C3%A9",
    "0" * 32,
    "f" * 64,
    "@N@",
)
_HEX_DIGITS = re.compile(r"[0-9a-f]+")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~/:@]+")
_CNONCE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclasses.dataclass
class _Case:
    """A genuine answer and the request it was computed for (what an ACCEPT must match)."""

    realm: str
    account: _Account
    algorithm: Algorithm
    minter: str
    method: str
    uri: str
    body: bytes
    source_ip: str
    call_id: str
    challenge: ChallengeParams
    genuine: Credentials
    header: str
    expired: bool = False
    mutations: list[str] = dataclasses.field(default_factory=list)

    @property
    def deserves(self) -> Verdict:
        if self.minter == "alien":
            return Verdict.REJECT
        return self.account.deserves(self.realm, self.algorithm)


class _Clock:
    def __init__(self) -> None:
        self.now = _BASE_TIME

    def __call__(self) -> float:
        return self.now


def _same_uri(left: str, right: str) -> bool:
    return left == right or _URI_CLASS.get(left, left) == _URI_CLASS.get(right, right)


def _digest_fields(creds: Credentials) -> tuple[object, ...]:
    """What the response covers: without qop, nc is not in it, nor is cnonce unless the algorithm is -sess."""
    fields = tuple(getattr(creds, name) for name in _DIGEST_FIELDS)
    covers_cnonce = creds.qop is not None or creds.algorithm.is_session
    return (*fields, creds.cnonce if covers_cnonce else None, creds.nc_value if creds.qop is not None else None)


def _drive(coroutine: object) -> Decision:
    """Run a coroutine that never suspends (in-memory backends) without an event loop."""
    send = coroutine.send  # type: ignore[attr-defined]
    try:
        send(None)
    except StopIteration as done:
        result: Decision = done.value
        return result
    coroutine.close()  # type: ignore[attr-defined]
    raise RuntimeError("verify suspended: an in-memory backend awaited something")


class VerifyTarget:
    """Target ``verify``: Authenticator.verify on genuine answers mutated, and on raw headers."""

    name = "verify"

    def __init__(self, tolerated: Iterable[str] = ()) -> None:
        #: Known, reported issues not to fail on (see KNOWN_ISSUES); hits are counted and printed.
        self.tolerated = frozenset(tolerated)
        unknown = self.tolerated - set(KNOWN_ISSUES)
        if unknown:
            raise ValueError(f"unknown known issue(s): {', '.join(sorted(unknown))}")
        self._dir = tempfile.TemporaryDirectory(prefix="sipauth-fuzz-")
        users = Path(self._dir.name) / "users.yaml"
        users.write_text(_USERS_YAML, encoding="utf-8")
        self._clock = _Clock()
        self._seed = b""
        self._counter = 0
        credentials = UsersFile(users, _DEFAULT)
        self._auth = self._authenticator([_KEY_CURRENT, _KEY_PREVIOUS], credentials)
        self._minters = {
            "current": self._auth,
            "previous": self._authenticator([_KEY_PREVIOUS], credentials),
            "alien": self._authenticator([_KEY_ALIEN], credentials),
        }
        self.outcomes: Counter[str] = Counter()

    def _authenticator(self, keys: list[bytes], credentials: UsersFile) -> Authenticator:
        return Authenticator(
            default_realm=_DEFAULT,
            policies=_POLICIES,
            keyring=NonceKeyring(keys, random_bytes=self._random),
            replay=MemoryReplayGuard(clock=self._clock),
            credentials=credentials,
            clock=self._clock,
            dummy_key=b"d" * 32,
        )

    def _random(self, size: int) -> bytes:
        """Nonce randomness derived from the input, so an input replays exactly; unique within an input."""
        self._counter += 1
        return (self._seed + self._counter.to_bytes(4, "big")).rjust(size, b"\0")[-size:]

    def __call__(self, data: bytes) -> None:
        self._seed, self._counter = hashlib.blake2b(data, digest_size=8).digest(), 0
        self._clock.now = _BASE_TIME
        # A fresh replay guard per input: each input is judged on its own.
        self._auth.replay = MemoryReplayGuard(clock=self._clock)
        reader = _Reader(data)
        if reader.byte() % 4 == 3:
            self._raw(reader)
        else:
            self._genuine(reader)

    # -- raw headers ------------------------------------------------------------

    def _raw(self, reader: _Reader) -> None:
        realm = reader.pick(_REALM_FIELDS)
        request = VerifyRequest(
            method=reader.pick(_METHODS + _ODD_METHODS),
            request_uri=reader.pick((*(uri for uri, _ in _URIS), "", "sip:" + "x" * 3000)),
            body=reader.chunk(48),
            realm=realm,
            kind=reader.pick(tuple(ChallengeKind)),
            source_ip=reader.pick((*_IPS, "", "1" * 100)),
            call_id=reader.pick(_CALL_IDS),
            authorization="",
        )
        nonce_choices = bytes(reader.byte() for _ in range(5))
        mode = reader.byte()
        header = _decode_header(mode, reader.rest())
        if "@N@" in header:
            header = header.replace("@N@", self._nonce(_Reader(nonce_choices)))
        request = dataclasses.replace(request, authorization=header)
        decision = self._verify(request)
        if decision is not None and decision.verdict is Verdict.ACCEPT:
            raise FuzzFailure(f"forgery: a raw header was ACCEPTed: {request!r}")

    def _nonce(self, reader: _Reader) -> str:
        """A genuine nonce of a configured key for some realm, algorithm and bindings."""
        realm = reader.pick(tuple(_POLICIES))
        binding = NonceBinding(realm, reader.pick(("", *_IPS)), reader.pick(("", *_CALL_IDS)))
        keyring = reader.pick(tuple(self._minters.values())).keyring
        return keyring.mint(binding, reader.pick(tuple(Algorithm)), now=self._clock(), ttl=300)

    # -- genuine answers, mutated -----------------------------------------------

    def _genuine(self, reader: _Reader) -> None:
        case = self._answer(reader)
        request = VerifyRequest(
            method=case.method,
            request_uri=case.uri,
            authorization=case.header,
            body=case.body,
            realm="" if case.realm == _DEFAULT and reader.byte() % 2 else case.realm,
            kind=reader.pick(tuple(ChallengeKind)),
            source_ip=case.source_ip,
            call_id=case.call_id,
        )
        twice = reader.byte() % 4 == 0
        count = max(0, reader.byte() % 9 - 3)
        items = case.header.removeprefix("Digest ").split(", ")
        for _ in range(count):
            request, items = self._mutate(reader, case, request, items)
        if case.mutations:
            request = dataclasses.replace(request, authorization=self._render(reader, case, items))
        decision = self._verify(request)
        if decision is not None:
            self._judge(case, request, decision)
        if twice:
            self._replay(case, request, decision)

    def _replay(self, case: _Case, request: VerifyRequest, first: Decision | None) -> None:
        """Send an answer again: the same request, and a qop-less answer again with a higher nc."""
        again = self._verify(request)
        if first is None or first.verdict is not Verdict.ACCEPT:
            return
        if again is not None and again.verdict is Verdict.ACCEPT:
            raise FuzzFailure(f"replay: the same request was ACCEPTed twice: {case.mutations} {request!r}")
        creds = parse_credentials(request.authorization)
        if creds.qop is not None:
            return
        # Without qop, nc is not covered by the digest (RFC 2069): attaching one must not open a new use.
        nc = f"{(creds.nc or 0) + 1:08x}"
        params = [f"{name}={_quoted(value)}" for name, value in creds.params.items() if name != "nc"]
        bumped = dataclasses.replace(request, authorization="Digest " + ", ".join([*params, f"nc={nc}"]))
        third = self._verify(bumped)
        if third is not None and third.verdict is Verdict.ACCEPT:
            raise FuzzFailure(
                f"replay: an answer without qop was ACCEPTed again with nc={nc} attached: {bumped.authorization!r}"
            )

    def _tolerated(self, issue: str) -> None:
        """Count a hit of a known, reported issue; say so on stderr at 1, 10, 100... hits."""
        self.outcomes[f"tolerated:{issue}"] += 1
        hits = self.outcomes[f"tolerated:{issue}"]
        if str(hits).strip("0") == "1":
            print(f"fuzz: tolerated known issue {issue}: {hits} hits", file=sys.stderr, flush=True)

    def _answer(self, reader: _Reader) -> _Case:
        realm = reader.pick(tuple(_POLICIES))
        policy = _POLICIES[realm]
        algorithm = reader.pick(policy.algorithms)
        account = reader.pick(_ACCOUNTS)
        qop = reader.pick(policy.qop + ((None,) if policy.allow_qop_less else ()))
        if qop is None and algorithm.is_session:
            # -sess needs the cnonce, which an answer without qop does not carry (RFC 2617 section 3.2.2.2).
            qop = policy.qop[0]
        nc = 1 + reader.byte()
        cnonce = "".join(_CNONCE_ALPHABET[b % len(_CNONCE_ALPHABET)] for b in reader.chunk(16)) or "c"
        method = reader.pick(_METHODS)
        uri = reader.pick(_URIS)[0]
        body = reader.chunk(32)
        source_ip = reader.pick(_IPS)
        call_id = reader.pick(_CALL_IDS[:2])
        minter = reader.pick(("current", "current", "previous", "alien"))
        challenge = self._minters[minter].issue_challenge(
            ChallengeRequest(
                method=method,
                realm=realm,
                request_uri=uri,
                source_ip=source_ip,
                call_id=call_id,
                algorithms=(algorithm,),
            )
        )
        params = parse_challenge(challenge.header_values[0])
        if qop is None:
            params = dataclasses.replace(params, qop=())
        header = answer_challenge(
            params,
            username=account.username,
            password=account.password,
            method=method,
            uri=uri,
            body=body,
            nc=nc,
            cnonce=cnonce,
            qop=qop,
        )
        if qop is None and reader.byte() % 2:
            # Some UAs send nc even without qop; RFC 2069 digests do not cover it.
            header += f", nc={nc:08x}"
        try:
            genuine = parse_credentials(header)
        except DigestError as exc:
            raise FuzzFailure(f"a standard answer does not parse: {header!r}: {exc}") from exc
        return _Case(realm, account, algorithm, minter, method, uri, body, source_ip, call_id, params, genuine, header)

    def _mutate(
        self, reader: _Reader, case: _Case, request: VerifyRequest, items: list[str]
    ) -> tuple[VerifyRequest, list[str]]:
        """Apply one mutation, chosen by the input, to the parameters or the request."""
        op = reader.byte() % 17
        case.mutations.append(f"op{op}")
        items = list(items)
        index = reader.byte() % len(items) if items else 0
        if op == 0:  # set a parameter to an interesting or arbitrary value, quoted or bare
            name = reader.pick(_PARAM_NAMES)
            value = reader.pick(_INTERESTING) if reader.byte() % 3 else reader.text(24)
            value = value.replace("@N@", self._nonce(reader))
            rendered = f"{name}={_quoted(value) if reader.byte() % 2 or not _TOKEN.fullmatch(value) else value}"
            names = [item.split("=", 1)[0].lower() for item in items]
            if name in names:
                items[names.index(name)] = rendered
            else:
                items.append(rendered)
        elif op == 1 and items:  # drop a parameter
            del items[index]
        elif op == 2 and items:  # repeat a parameter, its name in another case
            name, _, value = items[index].partition("=")
            items.append(f"{name.upper() if reader.byte() % 2 else name.title()}={value}")
        elif op == 3 and items:  # change the case of a name (harmless)
            name, _, value = items[index].partition("=")
            items[index] = f"{name.swapcase()}={value}"
        elif op == 4 and items:  # quote a bare value or unquote a quoted one (harmless when possible)
            name, _, value = items[index].partition("=")
            inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else None
            if inner is None:
                items[index] = f"{name}={_quoted(value)}"
            elif _TOKEN.fullmatch(inner):
                items[index] = f"{name}={inner}"
        elif op == 5 and items:  # move a parameter (harmless)
            items.insert(reader.byte() % len(items), items.pop(index))
        elif op == 6:  # change one digit of the response (as the client wrote it: quoted lower-case hex)
            for position, item in enumerate(items):
                digits = item.removeprefix('response="').removesuffix('"')
                if item == f'response="{digits}"' and _HEX_DIGITS.fullmatch(digits):
                    at = reader.byte() % len(digits)
                    new = "0123456789abcdef"[(int(digits[at], 16) + 1 + reader.byte() % 15) % 16]
                    items[position] = f'response="{digits[:at]}{new}{digits[at + 1 :]}"'
        elif op == 7:  # username as an RFC 8187 ext-value (harmless)
            items = [item for item in items if not item.startswith("username=")]
            items.insert(0, "username*=UTF-8''" + urllib.parse.quote(case.account.username, safe=""))
        elif op == 8:  # another method
            request = dataclasses.replace(request, method=reader.pick(_METHODS + _ODD_METHODS))
        elif op == 9:  # another Request-URI: an equivalent spelling, another URI, or anything
            uri = reader.pick(_URIS)[0] if reader.byte() % 4 else reader.text(40)
            request = dataclasses.replace(request, request_uri=uri)
        elif op == 10:  # another body
            request = dataclasses.replace(request, body=reader.chunk(32))
        elif op == 11:  # another source IP or Call-ID
            if reader.byte() % 2:
                request = dataclasses.replace(request, source_ip=reader.pick(("", *_IPS)))
            else:
                request = dataclasses.replace(request, call_id=reader.pick(_CALL_IDS))
        elif op == 12:  # another realm field
            request = dataclasses.replace(request, realm=reader.pick(_REALM_FIELDS))
        elif op == 13:  # the other challenge kind (harmless: nonces are not bound to it)
            other = ChallengeKind.PROXY if request.kind is ChallengeKind.WWW else ChallengeKind.WWW
            request = dataclasses.replace(request, kind=other)
        elif op == 14:  # time passes, up to twice the nonce lifetime
            self._clock.now += reader.byte() * 3
            case.expired = self._clock.now >= _BASE_TIME + _POLICIES[case.realm].nonce_ttl
        elif op == 15:  # another nc, or the same nc spelled in the other case
            nc = case.genuine.nc or 1
            value = f"{nc:08X}" if reader.byte() % 2 else f"{(nc + 1 + reader.byte()) % (1 << 32):08x}"
            items = [f"nc={value}" if item.startswith("nc=") else item for item in items]
        elif op == 16:  # another algorithm token, or the same one in another case
            token = reader.pick(tuple(a.token for a in Algorithm))
            token = token.lower() if reader.byte() % 2 else token
            items = [f"algorithm={token}" if item.startswith("algorithm=") else item for item in items]
        return request, items

    @staticmethod
    def _render(reader: _Reader, case: _Case, items: list[str]) -> str:
        """Join the parameters back into a header, then maybe damage its bytes."""
        separator = reader.pick((", ", ",", " ,\t", ",\r\n ", ", "))
        header = reader.pick(("Digest ", "digest ", "DIGEST\t", "Digest ")) + separator.join(items)
        op = reader.byte() % 6
        if op >= 3 or not header:
            return header
        case.mutations.append(f"bytes{op}")
        at = (reader.byte() << 8 | reader.byte()) % len(header)
        if op == 0:  # overwrite one character
            return header[:at] + (reader.text(4) or "\x00")[:1] + header[at + 1 :]
        if op == 1:  # insert text
            return header[:at] + reader.text(16) + header[at:]
        return header[:at] + header[at + 1 + reader.byte() % 8 :]  # cut a span

    # -- outcomes -----------------------------------------------------------------

    def _verify(self, request: VerifyRequest) -> Decision | None:
        """The decision, or None for InvalidRequest; any other exception is a crash."""
        try:
            decision = _drive(self._auth.verify(request))
        except InvalidRequest:
            self.outcomes["invalid_request"] += 1
            return None
        if not isinstance(decision, Decision):
            raise FuzzFailure(f"verify returned {decision!r}, not a Decision")
        self.outcomes[decision.verdict.name] += 1
        _check_decision(decision, request)
        return decision

    def _judge(self, case: _Case, request: VerifyRequest, decision: Decision) -> None:
        """Hold the decision on a (possibly mutated) genuine answer against what it deserves."""
        if decision.verdict is Verdict.ACCEPT:
            why = self._forgery(case, request)
            if why is not None:
                raise FuzzFailure(f"forgery ({why}): ACCEPT after {case.mutations} of {case.header!r}: {request!r}")
            if decision.username != case.genuine.username:
                raise FuzzFailure(f"ACCEPT names {decision.username!r}, not {case.genuine.username!r}")
            if not verify_rspauth(
                decision.authentication_info,
                case.challenge,
                username=case.account.username,
                password=case.account.password,
                uri=case.uri,
            ):
                raise FuzzFailure(f"rspauth does not verify: {decision.authentication_info!r}")
        if not case.mutations:
            deserved = case.deserves
            allowed = {deserved, Verdict.LOCKED}  # a lockout may refuse anything
            if decision.verdict not in allowed:
                raise FuzzFailure(
                    f"an unmodified answer ({case.account.username}, {case.realm}, {case.algorithm.token}, "
                    f"{case.minter} key) got {decision.verdict.name} {decision.reason!r}, not {deserved.name}"
                )

    @staticmethod
    def _forgery(case: _Case, request: VerifyRequest) -> str | None:
        """None if an ACCEPT of ``request`` is deserved, else why it is a forgery."""
        if case.deserves is not Verdict.ACCEPT:
            return f"the genuine answer deserves {case.deserves.name}"
        if case.expired:
            return "the nonce had expired"
        if (request.realm or _DEFAULT) != case.realm:
            return "another realm"
        if request.method != case.method:
            return "another method"
        try:
            creds = parse_credentials(request.authorization)
        except DigestError:
            return "the header does not parse"
        if _digest_fields(creds) != _digest_fields(case.genuine):
            return "a parameter of the digest changed"
        policy = _POLICIES[case.realm]
        if creds.qop == "auth-int" and request.body != case.body:
            return "another body under auth-int"
        if policy.bind_source_ip and request.source_ip != case.source_ip:
            return "another source IP"
        if policy.bind_call_id and request.call_id != case.call_id:
            return "another Call-ID"
        if policy.verify_uri and not _same_uri(creds.uri, request.request_uri):
            return "a Request-URI that is not the digest uri"
        return None


_REASON = re.compile(r"[a-z][a-z_]*")


def _check_decision(decision: Decision, request: VerifyRequest) -> None:
    """Status code, challenge and reason as auth.proto documents them for each verdict."""
    verdict = decision.verdict
    where = f"{verdict.name} {decision.reason!r}"
    if verdict is Verdict.ACCEPT:
        if decision.status_code != 0 or decision.challenge is not None or decision.reason:
            raise FuzzFailure(f"ACCEPT with a status code, challenge or reason: {decision!r}")
        if not decision.username or 'rspauth="' not in decision.authentication_info:
            raise FuzzFailure(f"ACCEPT without username or rspauth: {decision!r}")
        return
    if not _REASON.fullmatch(decision.reason):
        raise FuzzFailure(f"{where}: reason is not a code")
    if decision.authentication_info:
        raise FuzzFailure(f"{where} carries Authentication-Info")
    expected_status = {
        Verdict.REJECT: request.kind.status_code,
        Verdict.STALE: request.kind.status_code,
        Verdict.INVALID: 400,
        Verdict.FORBIDDEN: 403,
        Verdict.LOCKED: 403,
    }[verdict]
    if decision.status_code != expected_status:
        raise FuzzFailure(f"{where} has status {decision.status_code}, not {expected_status}")
    challenge = decision.challenge
    if verdict in (Verdict.FORBIDDEN, Verdict.LOCKED):
        if challenge is not None:
            raise FuzzFailure(f"{where} carries a challenge")
        return
    if challenge is None or not challenge.header_values:
        raise FuzzFailure(f"{where} without a challenge")
    if (challenge.status_code, challenge.header_name) != request.kind.value:
        raise FuzzFailure(f"{where}: the challenge is for the other header")
    for value in challenge.header_values:
        if not value.startswith("Digest ") or ("stale=true" in value) != (verdict is Verdict.STALE):
            raise FuzzFailure(f"{where}: not a Digest challenge with stale=true exactly on STALE: {value!r}")


# -- corpus -------------------------------------------------------------------

_GOOD = (
    'Digest username="alice", realm="example.test", nonce="abc", uri="sip:example.test", '
    'response="0123456789ABCDEF0123456789abcdef", algorithm=MD5, qop=auth, nc=0000000A, cnonce="xyz"'
)
_GOOD_VARIANTS = (
    _GOOD,
    _GOOD.replace('username="alice"', "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe"),
    _GOOD.replace('username="alice"', r'username="al\"i\\ce"'),
    _GOOD.replace("algorithm=MD5", 'Algorithm="sha-256-SESS"').replace("0123456789ABCDEF", "0123456789abcdef" * 3),
    _GOOD + ", userhash=true, opaque=\"o\", x-ext='1'",
    _GOOD.replace(", ", ",\r\n "),
    'Digest username="bob", realm="example.test", nonce="n", uri="sip:x", response="' + "e" * 64 + '"',
)


def _answers() -> Iterator[str]:
    """Standard answers from the independent client, one per algorithm and qop."""
    for algorithm in Algorithm:
        for qop in ("auth", "auth-int", None):
            if qop is None and algorithm.is_session:
                continue  # -sess needs qop (its HA1 covers the cnonce)
            challenge = ChallengeParams(
                realm=_DEFAULT, nonce="x" * 52, algorithm=algorithm.token, qop=(qop,) if qop else ()
            )
            yield answer_challenge(
                challenge,
                username="alice",
                password="wonderland",
                method="INVITE",
                uri="sip:bob@example.test",
                body=b"v=0\r\n",
                cnonce="0a4f113b",
                qop=qop,
            )


def seeds(target: str) -> list[bytes]:
    """The seed corpus of ``target``: the hostile headers of the unit tests and standard answers."""
    headers = [header for _, header in HOSTILE] + list(_GOOD_VARIANTS) + list(_answers())
    if target == "parser":
        out = []
        for header in headers:
            mode, raw = _encode_header(header)
            out += [bytes([mode]) + raw, bytes([mode | 2]) + raw]
        return out
    # verify: genuine answers of every account, realm and mutation, then the raw headers.
    # Layout of a genuine case: mode, realm, algorithm, account, qop, nc, cnonce length, method,
    # uri, body length, source IP, Call-ID, minter, realm field, kind, twice, mutation count.
    out = [bytes([0, realm, 0, account]) + bytes(20) for realm in range(2) for account in range(len(_ACCOUNTS))]
    out += [bytes([1, *bytes(14), 1, 4, op]) + bytes(range(1, 30)) for op in range(17)]
    # Known issue qopless-nc-replay: alice, no qop, nc attached, sent twice.
    out.append(bytes([0, 0, 0, 0, 2, *bytes(8), 1, *bytes(8)]))
    # Layout of a raw case: mode 3, seven request fields, five nonce choices, the text decoding, the text.
    for header in headers:
        mode, raw = _encode_header(header.replace('nonce="n"', 'nonce="@N@"').replace('nonce="abc"', 'nonce="@N@"'))
        out.append(bytes([3, *bytes(12), mode]) + raw)
    return out


def dictionary() -> list[str]:
    """Tokens of the digest grammar for libFuzzer's ``-dict`` (it splices them into inputs)."""
    words = [
        "Digest ",
        ", ",
        '"',
        '\\"',
        "\r\n ",
        "=",
        *(f"{name}=" for name in _PARAM_NAMES),
        *(a.token for a in Algorithm),
        "auth",
        "auth-int",
        "true",
        "false",
        "00000001",
        "ffffffff",
        "UTF-8''",
        "%C3%A9",
        "sip:",
        "sips:",
        _DEFAULT,
        "0123456789abcdef0123456789abcdef",
        "@N@",
    ]
    return sorted(set(words))


#: name -> target factory.
TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    ParserTarget.name: ParserTarget,
    VerifyTarget.name: VerifyTarget,
}
