"""The `sipauth` and `sipauth-client` commands as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sipauth.digest import Algorithm, compute_ha1
from tests.support.procs import free_port, wait_until
from tests.support.sipauth_process import EXAMPLES

BIN = Path(sys.executable).parent


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIPAUTH_")}
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, env={**base, **(env or {})}, check=False
    )


def test_ha1_reads_the_password_from_stdin() -> None:
    """`sipauth ha1` prints each HA1 and never the password; there is no way to pass it in argv."""
    result = run(str(BIN / "sipauth"), "ha1", "--user", "alice", "--realm", "example.test", stdin="wonderland\n")
    assert result.returncode == 0, result.stderr
    assert f"MD5: {compute_ha1(Algorithm.MD5, 'alice', 'example.test', 'wonderland')}" in result.stdout
    assert f"SHA-256: {compute_ha1(Algorithm.SHA_256, 'alice', 'example.test', 'wonderland')}" in result.stdout
    assert "wonderland" not in result.stdout + result.stderr
    refused = run(str(BIN / "sipauth"), "ha1", "--user", "a", "--realm", "r", "--password", "x")
    assert refused.returncode == 2


def test_check_config_accepts_the_example_and_names_bad_fields(tmp_path: Path) -> None:
    """`sipauth check-config` passes the example and fails a bad file with the field's name."""
    ok = run(str(BIN / "sipauth"), "check-config", "--config", str(EXAMPLES / "sipauth.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "settings are valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"users_file: {EXAMPLES / 'users.yaml'}\npolicy:\n  algorithms: [SHA-1]\n")
    failed = run(str(BIN / "sipauth"), "check-config", "--config", str(bad))
    assert failed.returncode == 2
    assert "policy.algorithms" in failed.stderr
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  eve: {display_name: Eve}\n")
    bad.write_text(f"users_file: {users}\n")
    failed = run(str(BIN / "sipauth"), "check-config", "--config", str(bad))
    assert failed.returncode == 2
    assert "eve" in failed.stderr


def test_make_run_configuration_serves_the_demo_users() -> None:
    """The `make run` command line serves alice and bob; `sipauth-client login` ACCEPTs them; SIGTERM exits 0."""
    port = free_port()
    env = {"SIPAUTH_LISTEN": f"127.0.0.1:{port}"}
    server = subprocess.Popen(
        [str(BIN / "sipauth"), "serve", "--config", str(EXAMPLES / "sipauth.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SIPAUTH_")}, **env},
    )
    try:
        target = f"127.0.0.1:{port}"
        wait_until(
            lambda: run(str(BIN / "sipauth-client"), "--target", target, "challenge").returncode == 0,
            20,
            "sipauth to serve",
        )
        for user, password in (("alice", "wonderland"), ("bob", "builder")):
            result = run(str(BIN / "sipauth-client"), "--target", target, "login", "--user", user, stdin=password)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "verdict: VERDICT_ACCEPT" in result.stdout
            assert "rspauth: valid" in result.stdout
        wrong = run(str(BIN / "sipauth-client"), "--target", target, "login", "--user", "alice", stdin="nope")
        assert wrong.returncode == 1
        assert "reason: bad_credentials" in wrong.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "wonderland" not in err
    assert '"message": "stopped"' in err
