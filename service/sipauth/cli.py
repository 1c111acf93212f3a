"""The ``sipauth`` command: serve, check-config, ha1, keygen."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, load_settings
from .digest import Algorithm, compute_ha1

__all__ = ["main"]


def _read_password(confirm: bool) -> str:
    """From a prompt on a terminal, else the first line of stdin; never from argv."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        password = getpass.getpass("SIP password: ")
        if confirm and getpass.getpass("again: ") != password:
            raise SystemExit("sipauth: the passwords differ")
    if not password:
        raise SystemExit("sipauth: empty password")
    return password


def _cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve
    from .logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep serving without it
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .app import build_app

    settings = load_settings(args.config)
    app = build_app(settings)
    asyncio.run(app.close())
    realms = ", ".join(sorted(settings.policies()))
    store = "redis" if settings.redis.url else "memory"
    print(f"settings are valid: realms {realms}; replay store {store}; listen {settings.listen}")
    return 0


def _cmd_ha1(args: argparse.Namespace) -> int:
    password = _read_password(confirm=sys.stdin.isatty())
    names = args.algorithm or ["MD5", "SHA-256", "SHA-512-256"]
    for name in names:
        algorithm = Algorithm.parse(name).base
        print(f"{algorithm.token}: {compute_ha1(algorithm, args.user, args.realm, password)}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(48))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="sipauth", description="SIP Digest authentication service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate settings, users file and nonce keys, then exit")
    check.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    check.set_defaults(func=_cmd_check_config)

    ha1 = sub.add_parser("ha1", help="compute HA1s for a users file (password from a prompt or stdin)")
    ha1.add_argument("--user", required=True)
    ha1.add_argument("--realm", required=True)
    ha1.add_argument("--algorithm", action="append", help="MD5, SHA-256, SHA-512-256 (repeatable; default: all)")
    ha1.set_defaults(func=_cmd_ha1)

    keygen = sub.add_parser("keygen", help="print a new random nonce key (one line for nonce_keys_file)")
    keygen.set_defaults(func=_cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipauth`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sipauth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
