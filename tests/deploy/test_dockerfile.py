"""deploy/Dockerfile, checked statically (no Docker engine is needed to run these)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

from sipauth.cli import build_parser
from tests.deploy.manifests import DEPLOY, KUBERNETES, ROOT, find

DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "compose" / "kamailio.Dockerfile")
#: What README.md documents as the command that runs the server.
SERVE_COMMAND = ["sipauth", "serve", "--config", "/etc/sipauth/sipauth.yaml"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return out


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        tail = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if tail and any(fnmatch.fnmatchcase(part, tail) for part in prefix.split("/")[-1:]):
                return True
    return False


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_by_tag(dockerfile: Path) -> None:
    """Every FROM names an image with an explicit tag other than latest (or a build stage)."""
    stages: set[str] = set()
    for keyword, args in instructions(dockerfile):
        if keyword != "FROM":
            continue
        words = args.split()
        image = next(w for w in words if not w.startswith("--"))
        if image not in stages:
            name, _, tag = image.rpartition(":")
            assert name, image
            assert tag, f"{image} has no tag"
            assert tag != "latest", f"{image} is not pinned"
            assert "/" not in tag, f"{image} has no tag"
        if len(words) >= 3 and words[-2].upper() == "AS":
            stages.add(words[-1])


def test_runtime_is_python_slim_and_multi_stage() -> None:
    """The server image builds in one stage and runs on python:3.11-slim in the last one, copying from the first."""
    steps = instructions(DEPLOY / "Dockerfile")
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].split()[0].startswith("python:3.11-slim")
    build_stage = froms[0].split()[-1]
    assert any(keyword == "COPY" and f"--from={build_stage}" in args for keyword, args in steps)


def test_runs_as_a_fixed_non_root_user() -> None:
    """The last USER is a numeric UID other than 0, so Kubernetes can enforce runAsNonRoot and the manifests agree."""
    users = [args for keyword, args in instructions(DEPLOY / "Dockerfile") if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    pod = find(KUBERNETES, "Deployment", "sipauth")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_and_cmd_run_the_documented_command() -> None:
    """ENTRYPOINT + CMD is the README's `sipauth serve --config /etc/sipauth/sipauth.yaml`, which the CLI accepts."""
    steps = dict(instructions(DEPLOY / "Dockerfile"))
    command = json.loads(steps["ENTRYPOINT"]) + json.loads(steps["CMD"])
    assert command == SERVE_COMMAND
    assert "sipauth serve --config FILE" in (ROOT / "README.md").read_text(encoding="utf-8")
    args = build_parser().parse_args(command[1:])
    assert str(args.config) == SERVE_COMMAND[-1]


def test_settings_path_is_where_the_deployment_mounts_the_configmap() -> None:
    """The --config path of the image is a file the Deployment's /etc/sipauth volume provides."""
    pod = find(KUBERNETES, "Deployment", "sipauth")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "projected" in v]
    config_paths = [
        f"/etc/sipauth/{item['path']}"
        for source in volume["projected"]["sources"]
        if "configMap" in source
        for item in source["configMap"]["items"]
    ]
    assert SERVE_COMMAND[-1] in config_paths


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_reaches_the_build(dockerfile: Path) -> None:
    """Each COPY/ADD source from the build context exists in the repository and is not excluded by .dockerignore."""
    patterns = _dockerignore()
    copies = 0
    for keyword, args in instructions(dockerfile):
        if keyword not in {"COPY", "ADD"}:
            continue
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            copies += 1
            assert not re.search(r"[*?\[]", source), f"use explicit paths: {source}"
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} is not in the repository"
            assert not _ignored(source, patterns), f"{dockerfile.name}: {source} is excluded by .dockerignore"
    assert copies


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    """The virtualenv, git metadata and caches never enter the build context."""
    patterns = _dockerignore()
    local = (".venv/bin/python", ".git/HEAD", "service/sipauth/__pycache__/app.cpython-311.pyc", "tests/conftest.py")
    for path in local:
        assert _ignored(path, patterns), path
    assert not _ignored("README.md", patterns)
