"""Percentiles."""

from __future__ import annotations


def percentile(values: list[int] | list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])
