"""The credentials parser: tolerant of harmless variation, strict about anything ambiguous."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipauth.digest import Algorithm, DigestError, Limits, MalformedCredentials, UnsupportedAlgorithm, parse_credentials
from tests.unit.hostile import HOSTILE

GOOD = (
    'Digest username="alice", realm="example.test", nonce="abc", uri="sip:example.test", '
    'response="0123456789ABCDEF0123456789abcdef", algorithm=MD5, qop=auth, nc=0000000A, cnonce="xyz"'
)


def test_parses_every_field() -> None:
    """A complete header yields every field unquoted, with nc kept as sent and as a number."""
    creds = parse_credentials(GOOD)
    assert creds.username == "alice"
    assert creds.realm == "example.test"
    assert creds.uri == "sip:example.test"
    assert creds.response == "0123456789abcdef0123456789abcdef"
    assert creds.algorithm is Algorithm.MD5
    assert creds.qop == "auth"
    assert creds.nc == 10
    assert creds.nc_value == "0000000A"
    assert creds.cnonce == "xyz"


def test_tolerates_case_folding_and_whitespace() -> None:
    """Names in any case, quoted qop/algorithm/nc, folded lines and odd spacing are accepted."""
    header = (
        'digest  USERNAME = "alice" ,Realm="example.test",\r\n nonce="abc",URI="sip:example.test", '
        'Response="0123456789abcdef0123456789abcdef", Algorithm="sha-256-SESS", QOP="auth", NC="00000001", '
        'CNonce="c"'
    )
    creds = parse_credentials(header)
    assert creds.algorithm is Algorithm.SHA_256_SESS
    assert creds.qop == "auth"
    assert creds.nc == 1


def test_missing_algorithm_means_md5() -> None:
    """RFC 7616 section 3.4: an absent algorithm parameter means MD5."""
    creds = parse_credentials(GOOD.replace("algorithm=MD5, ", ""))
    assert creds.algorithm is Algorithm.MD5
    assert not creds.algorithm_explicit


def test_quoted_pair_unescaping() -> None:
    """Backslash escapes inside quoted strings are removed (RFC 3261 quoted-pair)."""
    creds = parse_credentials(GOOD.replace('username="alice"', r'username="al\"i\\ce"'))
    assert creds.username == 'al"i\\ce'


def test_username_star_is_decoded() -> None:
    """username* carries a UTF-8 name in RFC 8187 form (RFC 7616 section 3.4.4)."""
    header = GOOD.replace('username="alice"', "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe")
    assert parse_credentials(header).username == "J\u00e4s\u00f8n Doe"


def test_unknown_auth_params_are_kept() -> None:
    """Extension auth-params are tolerated and kept for inspection."""
    creds = parse_credentials(GOOD + ', x-ext="1"')
    assert creds.params["x-ext"] == "1"


def test_unsupported_algorithm_is_its_own_error() -> None:
    """A well-formed header with an unknown algorithm raises UnsupportedAlgorithm, reason algorithm_not_offered."""
    with pytest.raises(UnsupportedAlgorithm) as info:
        parse_credentials(GOOD.replace("algorithm=MD5", "algorithm=SHA-1"))
    assert info.value.reason == "algorithm_not_offered"


@pytest.mark.parametrize(("label", "header"), HOSTILE, ids=[label for label, _ in HOSTILE])
def test_hostile_headers_raise_one_error_type(label: str, header: str) -> None:
    """Every hostile header is refused with a DigestError (never another exception, never parsed as valid)."""
    if label in {"nonce of wrong type", "forged nonce right length", "deeply nested parens"}:
        # Syntactically fine: the nonce check / size limits downstream refuse these.
        creds = parse_credentials(header)
        assert creds.username
        return
    with pytest.raises(DigestError) as info:
        parse_credentials(header)
    assert info.value.reason in {"malformed", "algorithm_not_offered"}


def test_at_least_forty_hostile_headers() -> None:
    """The hostile corpus covers at least forty distinct cases."""
    assert len({header for _, header in HOSTILE}) >= 40


def test_limits_are_configurable() -> None:
    """A smaller header limit refuses what the default accepts."""
    with pytest.raises(MalformedCredentials):
        parse_credentials(GOOD, Limits(max_header_length=100))


def test_error_messages_do_not_echo_values() -> None:
    """Errors describe the problem without quoting the (possibly secret) values."""
    with pytest.raises(DigestError) as info:
        parse_credentials(GOOD + ', response="0123456789abcdef0123456789abcdef"')
    assert "0123456789abcdef" not in str(info.value)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=400))
def test_property_arbitrary_text_never_crashes(text: str) -> None:
    """Any text either parses or raises DigestError."""
    with contextlib.suppress(DigestError):
        parse_credentials(text)


_names = st.sampled_from(
    ["username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce", "opaque", "userhash", "x"]
)
_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40).map(
        lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
    st.from_regex(r"[A-Za-z0-9\-.]{0,20}", fullmatch=True),
    st.sampled_from(["MD5", "SHA-256-sess", "auth", "auth-int", "00000001", "0" * 32, '"' + "f" * 64 + '"']),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_names, _values), max_size=14), st.sampled_from([", ", ",", " , ", ",,"]))
def test_property_near_valid_headers(pairs: list[tuple[str, str]], sep: str) -> None:
    """Headers assembled from real parameter names either parse consistently or raise DigestError."""
    header = "Digest " + sep.join(f"{name}={value}" for name, value in pairs)
    try:
        creds = parse_credentials(header)
    except DigestError:
        return
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), "duplicates must be refused"
    assert {"realm", "nonce", "uri", "response"} <= set(names)
    assert len(creds.response) in (32, 64)
    if creds.qop is not None:
        assert creds.nc is not None
        assert creds.cnonce is not None


_PIECES = st.sampled_from(
    [
        "a",
        "nc",
        "Realm",
        "=",
        '"',
        '\\"',
        "\\",
        ",",
        ", ",
        " ",
        "\t",
        "x y",
        "00000001",
        "sip:a@b",
        "\x01",
        "é",
        "",
        '""',
    ]
)


@given(st.lists(_PIECES, max_size=24).map("".join))
@settings(max_examples=1500)
def test_the_whole_list_fast_path_agrees_with_the_stepwise_parser(text: str) -> None:
    """Parameters parsed in one findall() equal those parsed one at a time: same values or the same error."""
    from sipauth.digest.parser import _CONTROL, DEFAULT_LIMITS, _split_params, _split_params_stepwise

    def outcome(parse: Callable[[], dict[str, str]]) -> object:
        try:
            return parse()
        except MalformedCredentials as exc:
            return str(exc)

    controls = _CONTROL.search(text) is not None
    fast = outcome(lambda: _split_params(text, DEFAULT_LIMITS))
    stepwise = outcome(lambda: _split_params_stepwise(text, DEFAULT_LIMITS, controls))
    assert fast == stepwise
