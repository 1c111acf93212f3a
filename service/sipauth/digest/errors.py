"""The one error type the digest engine raises, and its precise subclasses."""

from __future__ import annotations

__all__ = ["DigestError", "MalformedCredentials", "UnsupportedAlgorithm"]


class DigestError(ValueError):
    """Base of every error raised by :mod:`sipauth.digest`.

    ``reason`` is the machine code the verdict carries (see auth.proto).
    Messages describe the input's shape only; they never quote secrets.
    """

    reason = "malformed"


class MalformedCredentials(DigestError):
    """The header does not follow the grammar or lacks a mandatory parameter."""


class UnsupportedAlgorithm(DigestError):
    """The algorithm named in the header is not one this engine implements."""

    reason = "algorithm_not_offered"
