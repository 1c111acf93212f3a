"""deploy/grafana/sipauth-dashboard.json: valid JSON that queries only the metrics sipauth exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.manifests import DEPLOY
from tests.deploy.promql import METRICS, allowed_series, labels_of, usage

DASHBOARD = DEPLOY / "grafana" / "sipauth-dashboard.json"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _expressions() -> list[str]:
    dashboard = _dashboard()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"]))
    return exprs


def test_dashboard_is_importable_json() -> None:
    """The dashboard parses, has a uid and title, unique panel ids, and every panel a position and a data source."""
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("expr", _expressions())
def test_queries_use_only_exported_metrics_and_labels(expr: str) -> None:
    """Each query reads only sipauth's exported series, and filters or groups only by labels those series carry."""
    used = usage(expr)
    allowed = allowed_series()
    assert used.series, f"no series in {expr}"
    assert used.series <= set(allowed), f"unknown series: {used.series - set(allowed)}"
    for series, label in used.matchers:
        assert label in labels_of(series), f"{series} has no label {label}"
    known = set().union(*(labels_of(s) for s in used.series))
    assert used.grouping <= known, f"grouping by labels the series lack: {used.grouping - known}"
    assert expr.count("(") == expr.count(")")


def test_dashboard_shows_every_exported_metric() -> None:
    """Every metric the service exports appears in at least one panel."""
    used = set().union(*(usage(expr).series for expr in _expressions()))
    for metric in METRICS:
        assert any(series == metric or series.startswith(f"{metric}_") for series in used), metric
