"""``sipauth-client``: try a running sipauth by hand.

sipauth-client challenge                       # print a 401 challenge
sipauth-client login --user alice              # act as a phone: challenge, answer, verify
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

import grpc

from .client import SipauthClient
from .ua import answer_challenge, parse_challenge, verify_rspauth
from .v1 import auth_pb2

__all__ = ["main"]


def _print_challenge(response: auth_pb2.IssueChallengeResponse) -> None:
    print(f"SIP/2.0 {response.status_code}")
    for value in response.header_values:
        print(f"{response.header_name}: {value}")


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    return sys.stdin.readline().rstrip("\n")


def _cmd_challenge(client: SipauthClient, args: argparse.Namespace) -> int:
    response = client.issue_challenge(
        method=args.method, realm=args.realm, proxy=args.proxy, request_uri=args.uri, algorithms=args.algorithm or ()
    )
    _print_challenge(response)
    return 0


def _cmd_login(client: SipauthClient, args: argparse.Namespace) -> int:
    password = _password(args)
    issued = client.issue_challenge(
        method=args.method, realm=args.realm, proxy=args.proxy, request_uri=args.uri, algorithms=args.algorithm or ()
    )
    _print_challenge(issued)
    challenge = parse_challenge(issued.header_values[0])
    authorization = answer_challenge(challenge, username=args.user, password=password, method=args.method, uri=args.uri)
    header = "Proxy-Authorization" if args.proxy else "Authorization"
    print(f"{header}: {authorization}")
    verdict = client.verify_response(
        authorization=authorization, method=args.method, request_uri=args.uri, realm=args.realm, proxy=args.proxy
    )
    print(f"verdict: {auth_pb2.Verdict.Name(verdict.verdict)} reason: {verdict.reason or '-'}")
    if verdict.verdict == auth_pb2.VERDICT_ACCEPT:
        print(f"Authentication-Info: {verdict.authentication_info}")
        mutual = verify_rspauth(
            verdict.authentication_info, challenge, username=args.user, password=password, uri=args.uri
        )
        print(f"rspauth: {'valid' if mutual else 'INVALID'}")
        identity = verdict.identity
        print(f"identity: {identity.display_name!r} {identity.sip_uri} groups={list(identity.groups)}")
        return 0 if mutual else 1
    if verdict.HasField("challenge"):
        _print_challenge(verdict.challenge)
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="sipauth-client", description="Try a running sipauth service.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of sipauth (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline per call in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("challenge", _cmd_challenge, "ask for a challenge and print it"),
        ("login", _cmd_login, "act as a UA: get a challenge, answer it, print the verdict"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--realm", default="", help="realm (default: the service's default realm)")
        cmd.add_argument("--method", default="REGISTER")
        cmd.add_argument("--uri", default="sip:example.test", help="Request-URI")
        cmd.add_argument("--proxy", action="store_true", help="407 / Proxy-Authenticate instead of 401")
        cmd.add_argument("--algorithm", action="append", help="offer this algorithm (repeatable)")
        cmd.set_defaults(func=func)
        if name == "login":
            cmd.add_argument("--user", required=True)
            cmd.add_argument("--password", help="for demos only (visible to other users); default: a prompt or stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sipauth-client``."""
    args = build_parser().parse_args(argv)
    with SipauthClient(args.target, timeout=args.timeout, retries=0) as client:
        try:
            return int(args.func(client, args))
        except grpc.RpcError as exc:
            print(f"sipauth-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
