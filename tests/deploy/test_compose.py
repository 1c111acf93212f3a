"""deploy/compose.yaml: it parses, its services hang together, and every file it names exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from sipauth.config import load_settings, parse_listen
from sipauth.digest import Algorithm, compute_ha1
from tests.deploy.manifests import DEPLOY, ROOT

COMPOSE = DEPLOY / "compose.yaml"
SETTINGS = DEPLOY / "compose" / "sipauth" / "sipauth.yaml"
DEMO_USERS = DEPLOY / "compose" / "ldap" / "20-demo-users.ldif"
#: The demo users of README.md and examples/users.yaml.
USERS = {"alice": "wonderland", "bob": "builder"}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _bind_sources() -> list[tuple[str, Path]]:
    out = []
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("."), f"{name}: {source} should be a bind mount relative to deploy/"
            out.append((name, (DEPLOY / source).resolve()))
    return out


def test_compose_file_parses_with_the_demo_services() -> None:
    """The compose file is YAML with sipauth, Redis, OpenLDAP and Kamailio, each from a tagged image or a build."""
    services = _compose()["services"]
    assert set(services) == {"sipauth", "redis", "openldap", "kamailio"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" not in service:
            _, _, tag = service["image"].rpartition(":")
            assert tag, f"{name}: {service['image']} has no tag"
            assert tag != "latest", f"{name}: {service['image']} is not pinned"


@pytest.mark.parametrize("name", ["sipauth", "kamailio"])
def test_builds_use_existing_contexts_and_dockerfiles(name: str) -> None:
    """Each build names a context directory and a Dockerfile that exist."""
    build = _service(name)["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()
    if name == "sipauth":
        assert build["dockerfile"] == "deploy/Dockerfile"


def test_every_bind_mounted_file_exists() -> None:
    """Every bind mount source (settings, LDIFs, the Kamailio recipe) exists in the repository."""
    sources = _bind_sources()
    assert sources
    for name, path in sources:
        assert path.exists(), f"{name}: {path.relative_to(ROOT)} does not exist"


def test_kamailio_runs_the_recipe_from_clients_kamailio() -> None:
    """Kamailio mounts the clients/kamailio recipe where kamailio.cfg expects it and calls sipauth's proxies' port."""
    kamailio = _service("kamailio")
    mounts = {}
    for volume in kamailio["volumes"]:
        source, target, _mode = volume.split(":")
        mounts[str((DEPLOY / source).resolve().relative_to(ROOT))] = target
    assert mounts == {
        "clients/kamailio/kamailio.cfg": "/etc/kamailio/kamailio.cfg",
        "clients/kamailio/sipauth_kemi.py": "/etc/kamailio/sipauth_kemi.py",
    }
    cfg = (ROOT / "clients" / "kamailio" / "kamailio.cfg").read_text(encoding="utf-8")
    assert '"/etc/kamailio/sipauth_kemi.py"' in cfg
    dockerfile = (DEPLOY / "compose" / "kamailio.Dockerfile").read_text(encoding="utf-8")
    for line in cfg.splitlines():
        if line.startswith("#!define SIPAUTH_PYTHON_PATH"):
            assert line.split('"')[1] in dockerfile
    host, port = kamailio["environment"]["KAMAILIO_SIPAUTH_TARGET"].rsplit(":", 1)
    assert host == "sipauth"
    proxy_listen = load_settings(SETTINGS, environ={}).proxy_listen
    assert proxy_listen is not None  # Kamailio calls the proxies' port
    assert int(port) == parse_listen(proxy_listen)[1]
    assert f"127.0.0.1:{port}:{port}" in _service("sipauth")["ports"]


def test_sipauth_settings_are_valid_and_point_at_the_compose_services() -> None:
    """The demo settings pass sipauth's validation, load their nonce key, and name the redis and openldap services."""
    settings = load_settings(SETTINGS, environ={})
    assert settings.nonce_secrets()
    assert settings.redis.url is not None
    assert urlparse(settings.redis.url).hostname == "redis"
    assert settings.ldap is not None
    assert [urlparse(url).hostname for url in settings.ldap.urls] == ["openldap"]
    sipauth = _service("sipauth")
    assert "/etc/sipauth:ro" in " ".join(sipauth["volumes"])
    assert sipauth["read_only"] is True
    assert "/tmp" in sipauth["tmpfs"]
    openldap = _service("openldap")["environment"]
    assert sipauth["environment"]["SIPAUTH_LDAP__BIND_PASSWORD"] == openldap["LDAP_ADMIN_PASSWORD"]
    domain = ",".join(f"dc={part}" for part in openldap["LDAP_DOMAIN"].split("."))
    assert settings.ldap.bind_dn == f"cn=admin,{domain}"
    assert settings.ldap.base_dn.endswith(domain)


def test_demo_users_ldif_holds_the_readme_passwords() -> None:
    """The HA1s in the demo LDIF are those of the README's users and passwords in the demo realm."""
    realm = load_settings(SETTINGS, environ={}).default_realm
    attributes = {"sipauthHA1MD5": Algorithm.MD5, "sipauthHA1SHA256": Algorithm.SHA_256}
    entries = DEMO_USERS.read_text(encoding="utf-8").split("\n\n")
    seen = set()
    for entry in entries:
        fields = dict(line.split(": ", 1) for line in entry.splitlines() if ": " in line and not line.startswith("#"))
        if "uid" not in fields:
            continue
        user = fields["uid"]
        seen.add(user)
        for attribute, algorithm in attributes.items():
            assert fields[attribute] == compute_ha1(algorithm, user, realm, USERS[user])
    assert seen == set(USERS)
