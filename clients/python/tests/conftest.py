"""The client library's tests run against a real sipauth: the server fixtures of the repository's tests."""

from tests.conftest import (
    client,
    example_settings,
    nonce_keys_file,
    redis_server,
    server,
    server_factory,
    sipauth_process,
)

__all__ = [
    "client",
    "example_settings",
    "nonce_keys_file",
    "redis_server",
    "server",
    "server_factory",
    "sipauth_process",
]
