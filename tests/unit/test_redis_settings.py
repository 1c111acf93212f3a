"""RedisSettings: modes, password sources and failure policy are validated at start, secrets kept out of errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipauth.config import ConfigError, RedisSettings, load_settings


def test_nothing_configured_means_memory() -> None:
    """With no url, sentinels or nodes the replay state stays in memory and fail_closed is the default policy."""
    settings = RedisSettings()
    assert not settings.enabled
    assert settings.failure_policy == "fail_closed"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "sentinel", "sentinels": ["127.0.0.1:26379"]}, "master_name"),
        ({"mode": "cluster"}, "nodes"),
        ({"sentinels": ["127.0.0.1:26379"], "master_name": "m"}, "mode sentinel or cluster"),
        ({"mode": "cluster", "nodes": ["127.0.0.1:7000"], "url": "redis://x"}, "url is for mode standalone"),
        ({"mode": "cluster", "nodes": ["127.0.0.1:7000"], "wait_replicas": 1}, "wait_replicas"),
        ({"mode": "cluster", "nodes": ["127.0.0.1"]}, "host:port"),
        ({"url": "redis://x", "password": "a", "password_file": "/p"}, "not both"),
        ({"url": "redis://x", "tls_cert_file": "/c"}, "go together"),
        ({"url": "redis://x", "failure_policy": "fail_open"}, "failure_policy"),
    ],
)
def test_inconsistent_settings_are_refused(fields: dict[str, object], message: str) -> None:
    """Each inconsistent combination is refused at start with a message naming what is wrong."""
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={f"SIPAUTH_REDIS__{k.upper()}": _env(v) for k, v in fields.items()})


def _env(value: object) -> str:
    return "[" + ", ".join(value) + "]" if isinstance(value, list) else str(value)


def test_password_from_environment_is_secret() -> None:
    """SIPAUTH_REDIS__PASSWORD sets the password, which no repr or dump shows."""
    settings = load_settings(
        environ={"SIPAUTH_REDIS__URL": "redis://127.0.0.1:6379/0", "SIPAUTH_REDIS__PASSWORD": "s3cret-value"}
    )
    assert settings.redis.resolved_password() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings.model_dump())


def test_password_file_is_relative_to_the_settings_file(tmp_path: Path) -> None:
    """password_file is read relative to the settings file, newline dropped; a missing file is a clear error."""
    (tmp_path / "pw").write_text("from-file\n")
    config = tmp_path / "sipauth.yaml"
    config.write_text(
        "redis:\n  mode: sentinel\n  sentinels: [127.0.0.1:26379]\n  master_name: m\n  password_file: pw\n"
    )
    assert load_settings(config, environ={}).redis.resolved_password() == "from-file"
    config.write_text("redis:\n  url: redis://127.0.0.1:6379/0\n  password_file: missing\n")
    with pytest.raises(ConfigError, match=r"redis\.password_file: cannot read"):
        load_settings(config, environ={}).redis.resolved_password()
