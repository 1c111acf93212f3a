"""Hostile Authorization header values, shared by the parser and the gRPC tests."""

from __future__ import annotations

_OK = (
    'Digest username="alice", realm="example.test", nonce="n", uri="sip:example.test", '
    'response="0123456789abcdef0123456789abcdef", qop=auth, nc=00000001, cnonce="c"'
)


def _with(**changes: str) -> str:
    """The valid header with some parameters replaced (value written as given)."""
    parts = []
    for item in _OK.removeprefix("Digest ").split(", "):
        name = item.split("=", 1)[0]
        if name in changes:
            if changes[name] != "":
                parts.append(f"{name}={changes[name]}")
        else:
            parts.append(item)
    return "Digest " + ", ".join(parts)


#: (label, header) pairs: each must give a verdict (never a crash or an ACCEPT).
HOSTILE: list[tuple[str, str]] = [
    ("empty scheme only", "Digest"),
    ("scheme and spaces", "Digest    "),
    ("basic scheme", "Basic YWxpY2U6d29uZGVybGFuZA=="),
    ("bearer scheme", "Bearer abc.def.ghi"),
    ("no scheme", 'username="alice", realm="example.test"'),
    ("unbalanced quote", 'Digest username="alice, realm="example.test"'),
    ("unterminated quote at end", 'Digest username="alice'),
    ("quote inside bare value", 'Digest username=al"ice", realm="example.test"'),
    ("duplicate username", _OK + ', username="mallory"'),
    ("duplicate realm different case", _OK + ', REALM="example.test"'),
    ("duplicate response", _OK + ', response="0123456789abcdef0123456789abcdef"'),
    ("100 kB username", _with(username='"' + "a" * 100_000 + '"')),
    ("100 kB unknown param", _OK + ', x="' + "b" * 100_000 + '"'),
    ("100 kB of commas", "Digest " + "," * 100_000),
    ("NUL in username", _with(username='"ali\x00ce"')),
    ("NUL after scheme", 'Digest\x00 username="alice"'),
    ("NUL bare", _OK + ", x=a\x00b"),
    ("CR LF injection", _with(username='"alice"\r\nVia: evil')),
    ("bare LF", _with(username='"ali\nce"')),
    ("non-UTF-8 surrogate escape", _with(username='"\udcff\udcfe"')),
    ("nc with 7 digits", _with(nc="0000001")),
    ("nc with 9 digits", _with(nc="000000001")),
    ("nc not hex", _with(nc="0000000g")),
    ("nc zero", _with(nc="00000000")),
    ("nc negative", _with(nc="-0000001")),
    ("nc with spaces inside", _with(nc="0000 001")),
    ("nc quoted empty", _with(nc='""')),
    ("qop without nc", _with(nc="")),
    ("qop without cnonce", _with(cnonce="")),
    ("qop empty", _with(qop='""')),
    ("unknown algorithm", _OK + ", algorithm=SHA-1"),
    ("algorithm garbage", _OK + ', algorithm="MD5; DROP TABLE"'),
    ("algorithm empty", _OK + ', algorithm=""'),
    ("response not hex", _with(response='"zzzz456789abcdef0123456789abcdef"')),
    ("response wrong length", _with(response='"0123"')),
    ("response empty", _with(response='""')),
    ("missing nonce", _with(nonce="")),
    ("missing uri", _with(uri="")),
    ("missing realm", _with(realm="")),
    ("missing response", _with(response="")),
    ("missing username", _with(username="")),
    ("username and username*", _OK + ", username*=UTF-8''alice"),
    ("username* bad charset", _with(username="") + ", username*=latin1''alice"),
    ("username* bad percent", _with(username="") + ", username*=UTF-8''%ff%fe"),
    ("username* decoding to CR", _with(username="") + ", username*=UTF-8''al%0Dice"),
    ("username* decoding to NUL", _with(username="") + ", username*=UTF-8''al%00ice"),
    ("userhash not boolean", _OK + ", userhash=maybe"),
    ("trailing comma", _OK + ","),
    ("double comma", _OK.replace(", realm", ",, realm")),
    ("equals without value", _OK + ", x="),
    ("value without name", _OK + ', ="x"'),
    ("too many parameters", _OK + "".join(f", p{i}=v" for i in range(64))),
    ("unicode name", _OK + ', n\u00e4me="x"'),
    ("only whitespace", "   \t  "),
    ("tab separated junk", "Digest\tusername\t\t"),
    ("nonce of wrong type", _with(nonce="12345")),
    ("forged nonce right length", _with(nonce='"' + "A" * 56 + '"')),
    ("huge nonce", _with(nonce='"' + "N" * 5000 + '"')),
    ("escaped quote soup", 'Digest username="\\"\\"\\\\\\"", realm="\\'),
    ("deeply nested parens", _with(username='"' + "(" * 1000 + '"')),
    ("escaped control character in cnonce", _with(cnonce='"c\\\x1bc"')),
    ("escaped DEL in username", _with(username='"al\\\x7fice"')),
    ("session algorithm without qop", _with(qop="", nc="", cnonce="") + ", algorithm=MD5-sess"),
    ("algorithm with a Unicode long s", _OK + ', algorithm="MD5-\u017fe\u017f\u017f"'),
]
