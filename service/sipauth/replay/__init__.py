"""Replay guards: each (nonce, nc) is accepted at most once, across all replicas."""

from .base import ReplayGuard, ReplayMode
from .memory import MemoryReplayGuard

__all__ = ["MemoryReplayGuard", "ReplayGuard", "ReplayMode"]
