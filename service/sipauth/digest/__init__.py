"""Pure SIP Digest logic (RFC 7616, RFC 8760, RFC 3261 section 22): no I/O, no clocks.

Parse credentials, compute and compare digests, build challenge and
Authentication-Info values. Everything here is deterministic given its
arguments, so it is tested exhaustively without servers.
"""

from .algorithms import Algorithm
from .compute import compute_ha1, digests_equal, request_digest, response_auth, userhash
from .errors import DigestError, MalformedCredentials, UnsupportedAlgorithm
from .headers import build_authentication_info, build_challenge, challenge_template, quote
from .parser import Credentials, Limits, parse_credentials
from .uri import uris_match

__all__ = [
    "Algorithm",
    "Credentials",
    "DigestError",
    "Limits",
    "MalformedCredentials",
    "UnsupportedAlgorithm",
    "build_authentication_info",
    "build_challenge",
    "challenge_template",
    "compute_ha1",
    "digests_equal",
    "parse_credentials",
    "quote",
    "request_digest",
    "response_auth",
    "uris_match",
    "userhash",
]
