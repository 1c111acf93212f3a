"""Who is calling, for the duration of one RPC: read by the audit log and by log lines."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["AUDIT_LOGGER", "current_caller", "current_request_id"]

#: The logger of the audit trail (one line per decision; fail2ban reads it).
AUDIT_LOGGER = "sipauth.audit"

#: The authenticated proxy (matched certificate SAN or CN); empty without mutual TLS.
current_caller: ContextVar[str] = ContextVar("sipauth_caller", default="")
#: The request id: the caller's ``x-request-id`` metadata, or one made up for the call.
current_request_id: ContextVar[str] = ContextVar("sipauth_request_id", default="")
