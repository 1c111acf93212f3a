"""Client library for the sipauth gRPC service."""

from .client import AsyncSipauthClient, SipauthClient, TlsConfig
from .ua import ChallengeParams, answer_challenge, parse_challenge, verify_rspauth
from .v1 import auth_pb2

__all__ = [
    "AsyncSipauthClient",
    "ChallengeParams",
    "SipauthClient",
    "TlsConfig",
    "answer_challenge",
    "auth_pb2",
    "parse_challenge",
    "verify_rspauth",
]
