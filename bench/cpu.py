"""CPU time of server processes, from the kernel's own accounting (/proc/PID/stat)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in task.read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime + stime of ``pid`` (all its threads), plus its reaped and live descendants with ``children``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    total = ticks / _TICK
    if children:
        total += sum(cpu_seconds(child) for child in _children(pid))
    return total


def cpu_of(pids: list[int]) -> float:
    """Total CPU seconds of several process trees."""
    return sum(cpu_seconds(pid) for pid in pids)
