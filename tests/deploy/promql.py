"""The metric and label names a PromQL expression uses, and the metrics sipauth exports.

Not a PromQL parser: enough of the grammar (strings, selectors, ranges, grouping
clauses, function calls, Grafana variables) to list the series an expression reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["METRICS", "TARGET_LABELS", "Usage", "allowed_series", "labels_of", "usage"]

#: Every metric the service exports, with its labels (histograms also have le on _bucket).
METRICS: dict[str, frozenset[str]] = {
    "sipauth_requests_total": frozenset({"rpc", "verdict", "reason", "realm", "algorithm"}),
    "sipauth_request_duration_seconds": frozenset({"rpc"}),
    "sipauth_inflight_requests": frozenset(),
    "sipauth_backend_duration_seconds": frozenset({"backend", "operation"}),
    "sipauth_backend_errors_total": frozenset({"backend", "operation"}),
    "sipauth_credentials_cache_total": frozenset({"result"}),
    "sipauth_lockouts_total": frozenset({"scope"}),
    "sipauth_replay_fallback_decisions_total": frozenset(),
    "sipauth_health_serving": frozenset(),
}
HISTOGRAMS = frozenset({"sipauth_request_duration_seconds", "sipauth_backend_duration_seconds"})
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]\w*")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?")


def allowed_series() -> dict[str, frozenset[str]]:
    """Series name -> labels, with each histogram's _bucket, _count and _sum."""
    out = {name: labels for name, labels in METRICS.items() if name not in HISTOGRAMS}
    for name in HISTOGRAMS:
        out[f"{name}_bucket"] = METRICS[name] | {"le"}
        out[f"{name}_count"] = METRICS[name]
        out[f"{name}_sum"] = METRICS[name]
    return out


def labels_of(series: str) -> frozenset[str]:
    """The labels a series may carry, target labels included."""
    return allowed_series()[series] | TARGET_LABELS


@dataclass
class Usage:
    """What one expression reads."""

    #: Series names (selectors and bare metric names).
    series: set[str] = field(default_factory=set)
    #: (series or "", label) for every label matcher; "" for a selector without a name.
    matchers: set[tuple[str, str]] = field(default_factory=set)
    #: Labels in by/without/on/ignoring/group_* clauses.
    grouping: set[str] = field(default_factory=set)


def usage(expr: str) -> Usage:
    """The series, matcher labels and grouping labels of ``expr``."""
    found = Usage()
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("0", text)
    text = _RANGE.sub("", text)
    for match in _SELECTOR.finditer(text):
        name = match.group(1) or ""
        if name in _KEYWORDS:
            name = ""
        for label in _MATCHER_LABEL.findall(match.group(2)):
            found.matchers.add((name, label))
        if name:
            found.series.add(name)
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    for match in _GROUPING.finditer(text):
        found.grouping.update(label.strip() for label in match.group(1).split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS or name.lower() in {"inf", "nan"}:
            continue
        found.series.add(name)
    return found
