"""Settings: file, environment overrides, validation errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipauth.config import ConfigError, load_settings
from sipauth.digest import Algorithm
from sipauth.replay import ReplayMode
from tests.support.sipauth_process import EXAMPLES


def test_example_file_loads_with_relative_paths() -> None:
    """examples/sipauth.yaml validates and its users_file resolves next to it."""
    settings = load_settings(EXAMPLES / "sipauth.yaml", environ={})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.users_file == EXAMPLES / "users.yaml"
    policy = settings.policies()["example.test"]
    assert policy.algorithms == (Algorithm.SHA_256, Algorithm.MD5)
    assert policy.qop == ("auth",)
    assert settings.redis.url is None


def test_environment_overrides_file(tmp_path: Path) -> None:
    """SIPAUTH_* variables (aliases and nested paths) override the file."""
    keys = tmp_path / "keys"
    keys.write_text("k" * 40 + "\n")
    settings = load_settings(
        EXAMPLES / "sipauth.yaml",
        environ={
            "SIPAUTH_LISTEN": "0.0.0.0:6000",
            "SIPAUTH_ALLOW_PLAINTEXT": "true",
            "SIPAUTH_REDIS_URL": "redis://127.0.0.1:6390/1",
            "SIPAUTH_NONCE_KEYS_FILE": str(keys),
            "SIPAUTH_POLICY__ALGORITHMS": "[MD5]",
            "SIPAUTH_POLICY__REPLAY_MODE": "one-time",
            "SIPAUTH_REALMS": "{other.test: {nonce_ttl_seconds: 60}}",
        },
    )
    assert settings.listen == "0.0.0.0:6000"
    assert settings.redis.url == "redis://127.0.0.1:6390/1"
    assert settings.nonce_secrets() == [b"k" * 40]
    policies = settings.policies()
    assert policies["example.test"].algorithms == (Algorithm.MD5,)
    assert policies["other.test"].nonce_ttl == 60
    assert policies["other.test"].replay_mode is ReplayMode.ONE_TIME


def test_config_env_names_the_file() -> None:
    """SIPAUTH_CONFIG names the settings file when no path is given."""
    settings = load_settings(environ={"SIPAUTH_CONFIG": str(EXAMPLES / "sipauth.yaml")})
    assert settings.default_realm == "example.test"


@pytest.mark.parametrize(
    ("environ", "field"),
    [
        ({"SIPAUTH_LISTEN": "nowhere"}, "listen"),
        ({"SIPAUTH_POLICY__ALGORITHMS": "[SHA-1]"}, "policy.algorithms"),
        ({"SIPAUTH_POLICY__QOP": "[auth-conf]"}, "policy.qop"),
        ({"SIPAUTH_POLICY__NONCE_TTL_SECONDS": "-5"}, "policy.nonce_ttl_seconds"),
        ({"SIPAUTH_REDIS_URL": "http://x"}, "redis.url"),
        ({"SIPAUTH_LOG_LEVEL": "chatty"}, "log_level"),
        ({"SIPAUTH_NO_SUCH_SETTING": "1"}, "no_such_setting"),
        ({"SIPAUTH_REALMS": "{other.test: {algorithms: [MD4]}}"}, "algorithm"),
    ],
)
def test_invalid_settings_name_the_field(environ: dict[str, str], field: str) -> None:
    """Each invalid value stops the start with a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        load_settings(EXAMPLES / "sipauth.yaml", environ=environ)
    assert field in str(info.value)


def test_nonce_key_file_errors_do_not_print_keys(tmp_path: Path) -> None:
    """A short key is refused with its line number, never its value."""
    keys = tmp_path / "keys"
    keys.write_text("x" * 40 + "\nshort-secret-value\n")
    settings = load_settings(EXAMPLES / "sipauth.yaml", environ={"SIPAUTH_NONCE_KEYS_FILE": str(keys)})
    with pytest.raises(ConfigError) as info:
        settings.nonce_secrets()
    assert "#2" in str(info.value)
    assert "short-secret-value" not in str(info.value)


def test_nonce_key_file_comments_and_blank_lines(tmp_path: Path) -> None:
    """Comment and blank lines are ignored; order is kept (first mints)."""
    keys = tmp_path / "keys"
    keys.write_text("# rotated 2026-11\n" + "n" * 32 + "\n\n" + "o" * 32 + "\n")
    settings = load_settings(EXAMPLES / "sipauth.yaml", environ={"SIPAUTH_NONCE_KEYS_FILE": str(keys)})
    assert settings.nonce_secrets() == [b"n" * 32, b"o" * 32]


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A settings file that is not YAML, or not a mapping, is a ConfigError."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad, environ={})
