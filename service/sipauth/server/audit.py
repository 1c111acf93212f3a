"""The audit trail: one JSON line per VerifyResponse decision on the ``sipauth.audit`` logger.

Fields: rpc, realm, user (as claimed), source_ip, method, verdict, reason,
detail (the true reason behind ``bad_credentials``: unknown_user,
wrong_password, no_ha1_for_algorithm...), algorithm, caller (the proxy's
certificate identity under mutual TLS), latency_ms, request_id. Never the
Authorization header, a nonce, a password or an HA1. deploy/fail2ban reads it.
"""

from __future__ import annotations

import logging
import time

# The module, not its names: sipauth.logs imports this package (its caller module) while it loads.
from .. import logs
from ..authenticator import Decision, VerifyRequest
from .caller import AUDIT_LOGGER, current_caller, current_request_id

__all__ = ["AUDIT_LOGGER", "record_decision", "record_fault"]

_log = logging.getLogger(AUDIT_LOGGER)


def _common(request: VerifyRequest, latency: float) -> dict[str, object]:
    return {
        "event": "decision",
        "rpc": "VerifyResponse",
        "source_ip": request.source_ip,
        "method": request.method,
        "caller": current_caller.get(),
        "latency_ms": round(latency * 1000, 3),
        "request_id": current_request_id.get(),
    }


def _emit(fields: dict[str, object]) -> None:
    """One audit line, rendered straight for the standard handlers when they are all there is, else logged.

    Every VerifyResponse writes one, and logging's record machinery costs
    more than the rest of the line.
    """
    fast = logs.fast_lines(_log)
    loop = fast[1][0].running_loop() if fast is not None else None
    if fast is None or loop is None:
        _log.info("decision", extra=fields)
        return
    formatter, handlers = fast
    line = formatter.render(time.time(), AUDIT_LOGGER, "decision", fields)
    for handler in handlers:
        handler.emit_line(line, loop)


def record_decision(request: VerifyRequest, decision: Decision, latency: float) -> None:
    """Log one decision."""
    _emit(
        {
            **_common(request, latency),
            "realm": decision.realm,
            "user": decision.claimed_user,
            "verdict": decision.verdict.value,
            "reason": decision.reason,
            "detail": decision.detail,
            "algorithm": decision.algorithm.token if decision.algorithm else "",
        }
    )


def record_fault(request: VerifyRequest, status: str, latency: float) -> None:
    """Log a call that got no verdict (backend down, bad request)."""
    _emit({**_common(request, latency), "realm": request.realm, "verdict": "fault", "reason": status.lower()})
