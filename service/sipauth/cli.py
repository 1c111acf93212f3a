"""The ``sipauth`` command: serve, check-config, ha1, keygen, ldap check / set-ha1."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, Settings, load_settings
from .credentials.ldap_settings import LdapSettings
from .digest import Algorithm, compute_ha1
from .errors import read_secret_file

if TYPE_CHECKING:
    from .credentials.ldap import LdapSource

__all__ = ["main"]

#: Password of the account ``sipauth ldap set-ha1 --bind-dn`` writes with.
WRITER_PASSWORD_ENV = "SIPAUTH_LDAP_WRITER_PASSWORD"  # noqa: S105 - the name of a variable


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
    configure_logging(settings.log_level, settings.audit_file)
    if not args.worker:
        from .supervisor import pinned_cpus, resolve_workers, run_supervisor

        workers = resolve_workers(settings, args.workers)
        if workers > 1:
            return run_supervisor(settings, args.config, workers)
        if settings.pin_workers:
            args.cpu = pinned_cpus(1)[0]
    if args.cpu is not None:
        # Before the server starts its threads: they inherit the mask.
        os.sched_setaffinity(0, {args.cpu})
        logging.getLogger("sipauth").info("pinned to one CPU", extra={"cpu": args.cpu})
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep serving without it
        asyncio.run(serve(settings, worker=args.worker, ready_file=args.ready_file))
    else:
        uvloop.run(serve(settings, worker=args.worker, ready_file=args.ready_file))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .app import build_app

    settings = load_settings(args.config)
    app = build_app(settings)
    asyncio.run(app.close())
    realms = ", ".join(sorted(settings.policies()))
    store = f"redis ({settings.redis.mode})" if settings.redis.enabled else "memory"
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


def _ldap_settings(args: argparse.Namespace) -> tuple[Settings, LdapSettings]:
    settings = load_settings(args.config)
    if settings.ldap is None:
        raise ConfigError("ldap: not configured in these settings")
    return settings, settings.ldap


def _ldap_source(settings: Settings, ldap: LdapSettings) -> LdapSource:
    from .credentials.ldap import LdapSource

    try:
        return LdapSource(ldap, settings.default_realm)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _cmd_ldap_check(args: argparse.Namespace) -> int:
    from .credentials.ldap_admin import LdapCommandError, check_user

    settings, ldap = _ldap_settings(args)
    source = _ldap_source(settings, ldap)
    try:
        ready = check_user(source, args.user, sys.stdout)
    except LdapCommandError as exc:
        print(f"sipauth: {exc}", file=sys.stderr)
        return 1
    finally:
        source.directory.close()
    return 0 if ready else 1


def _writer_password(args: argparse.Namespace, ldap: LdapSettings) -> str:
    if args.bind_password_file is not None:
        password = read_secret_file(args.bind_password_file, "--bind-password-file")
    elif os.environ.get(WRITER_PASSWORD_ENV):
        password = os.environ[WRITER_PASSWORD_ENV]
    elif args.bind_dn is None:
        password = ldap.resolved_bind_password()
    else:
        raise ConfigError(f"--bind-dn needs --bind-password-file or ${WRITER_PASSWORD_ENV}")
    if not password:
        raise ConfigError("the password of the writing account is empty")
    return password


def _cmd_ldap_set_ha1(args: argparse.Namespace) -> int:
    from .credentials.ldap import LdapDirectory
    from .credentials.ldap_admin import LdapCommandError, set_ha1

    settings, ldap = _ldap_settings(args)
    source = _ldap_source(settings, ldap)
    try:
        writer_password = _writer_password(args, ldap)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    writer = LdapDirectory(
        ldap, bind_dn=args.bind_dn or ldap.bind_dn, bind_password=writer_password, pool_size=1, read_only=False
    )
    realms = args.realm or sorted(settings.policies())
    password = _read_password(confirm=sys.stdin.isatty())
    try:
        set_ha1(source, writer, args.user, password, realms=realms, out=sys.stdout)
    except LdapCommandError as exc:
        print(f"sipauth: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
        source.directory.close()
    return 0


def _cmd_unlock(args: argparse.Namespace) -> int:
    from .app import lockout_for, replay_guard_for

    if args.user is None and args.ip is None:
        raise SystemExit("sipauth unlock: name --user, --ip, or both")
    settings = load_settings(args.config)
    realm = args.realm or settings.default_realm

    async def run() -> int:
        replay = replay_guard_for(settings)
        try:
            lockout = lockout_for(settings, replay)
            if lockout is None:
                print("sipauth: lockout is disabled in these settings; nothing to unlock", file=sys.stderr)
                return 2
            if not settings.redis.enabled:
                print(
                    "sipauth: no Redis is configured, so lockout counters live in each sipauth process's memory "
                    "and cannot be reached from here (they are cleared when the process restarts)",
                    file=sys.stderr,
                )
                return 2
            removed = await lockout.unlock(realm=realm, username=args.user, source_ip=args.ip)
        finally:
            await replay.close()
        print(f"unlocked: {removed} counter(s) cleared")
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="sipauth", description="SIP Digest authentication service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port (default: settings `workers`; 0 = one per CPU)"
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
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

    ldap = sub.add_parser("ldap", help="LDAP / Active Directory: check a user, write HA1s")
    ldap_sub = ldap.add_subparsers(dest="ldap_command", required=True)
    ldap_check = ldap_sub.add_parser(
        "check", help="connect, bind, find a user and list which mapped attributes are present (no secrets)"
    )
    ldap_check.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    ldap_check.add_argument("--user", required=True)
    ldap_check.set_defaults(func=_cmd_ldap_check)
    set_ha1 = ldap_sub.add_parser(
        "set-ha1", help="compute a user's HA1s from a SIP password (prompt or stdin) and write the mapped attributes"
    )
    set_ha1.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    set_ha1.add_argument("--user", required=True, help="the digest username the phone will send")
    set_ha1.add_argument("--realm", action="append", help="realm to write (repeatable; default: every served realm)")
    set_ha1.add_argument("--bind-dn", help="account allowed to write the attributes (default: ldap.bind_dn)")
    set_ha1.add_argument(
        "--bind-password-file", type=Path, help=f"its password (or ${WRITER_PASSWORD_ENV}; never on the command line)"
    )
    set_ha1.set_defaults(func=_cmd_ldap_set_ha1)

    unlock = sub.add_parser("unlock", help="clear brute-force locks of a user (from one IP or all) or of an IP")
    unlock.add_argument("--config", type=Path, help="settings file (default: $SIPAUTH_CONFIG)")
    unlock.add_argument("--user", help="the digest username")
    unlock.add_argument("--realm", help="the user's realm (default: default_realm)")
    unlock.add_argument("--ip", help="source IP: with --user, only that pair; alone, the IP and its pairs")
    unlock.set_defaults(func=_cmd_unlock)
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
