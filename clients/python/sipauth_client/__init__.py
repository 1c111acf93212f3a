"""Client library for the sipauth gRPC service.

``SipauthClient`` / ``AsyncSipauthClient`` make the two RPCs; their
``authorize`` method is what a SIP proxy calls per request: it returns a
``ProxyDecision`` (forward, or the reply to send). ``ua`` answers challenges
like a phone does.
"""

from .client import AsyncSipauthClient, ClientOptions, SipauthClient, TlsConfig, algorithm_values
from .proxy import Action, ProxyDecision, ProxyRequest, select_credentials
from .ua import ChallengeParams, answer_challenge, parse_challenge, verify_rspauth
from .v1 import auth_pb2

__all__ = [
    "Action",
    "AsyncSipauthClient",
    "ChallengeParams",
    "ClientOptions",
    "ProxyDecision",
    "ProxyRequest",
    "SipauthClient",
    "TlsConfig",
    "algorithm_values",
    "answer_challenge",
    "auth_pb2",
    "parse_challenge",
    "select_credentials",
    "verify_rspauth",
]
