"""The digest uri must name the Request-URI, under SIP URI equivalence (RFC 3261 section 19.1.4)."""

from __future__ import annotations

import pytest

from sipauth.digest import uris_match


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@example.test", "sip:alice@example.test"),
        ("sip:alice@EXAMPLE.test", "sip:alice@example.test"),
        ("SIP:alice@example.test", "sip:alice@example.test"),
        ("sip:%61lice@example.test", "sip:alice@example.test"),
        ("sip:alice@example.test;transport=TCP", "sip:alice@example.test;transport=tcp"),
        ("sip:alice@example.test;a=1;b=2", "sip:alice@example.test;b=2;a=1"),
        ("sip:alice@example.test;lr", "sip:alice@example.test"),
        ("sip:[2001:db8::1]:5060", "sip:[2001:DB8::1]:5060"),
        ("/dir/index.html", "/dir/index.html"),
    ],
)
def test_equivalent(a: str, b: str) -> None:
    """These pairs name the same resource."""
    assert uris_match(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@example.test", "sip:ALICE@example.test"),
        ("sip:alice@example.test", "sip:alice@example.test:5060"),
        ("sip:alice@example.test", "sips:alice@example.test"),
        ("sip:alice@example.test;transport=tcp", "sip:alice@example.test"),
        ("sip:alice@example.test;user=phone", "sip:alice@example.test"),
        ("sip:alice@example.test;a=1", "sip:alice@example.test;a=2"),
        ("sip:alice@example.test?subject=x", "sip:alice@example.test"),
        ("sip:alice@example.test", "sip:bob@example.test"),
        ("tel:+15551234", "tel:+1-555-1234"),
        ("/a", "/b"),
    ],
)
def test_not_equivalent(a: str, b: str) -> None:
    """These pairs name different resources (or cannot be shown equal)."""
    assert not uris_match(a, b)
