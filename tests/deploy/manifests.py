"""Loading the files under deploy/ for the deploy tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEPLOY", "KUBERNETES", "ROOT", "SENTINEL", "find", "load_documents", "settings_text"]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SENTINEL = KUBERNETES / "redis-sentinel"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path`` (parsed once per run; treat as read-only)."""
    return list(_parse(path))


@cache
def _parse(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None)


def find(directory: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    """The one resource of ``kind`` (and ``name``) among the YAML files of ``directory``."""
    found = [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in load_documents(path)
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {directory}, found {len(found)}"
    return found[0]


def settings_text() -> str:
    """The sipauth.yaml held by the Kubernetes ConfigMap."""
    text: str = find(KUBERNETES, "ConfigMap", "sipauth")["data"]["sipauth.yaml"]
    return text
