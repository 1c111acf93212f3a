"""JSON-lines logging on stderr. Messages never carry secrets: callers log shapes and codes."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .server.caller import AUDIT_LOGGER, current_caller, current_request_id

__all__ = ["ContextFilter", "JsonFormatter", "TurnBuffered", "configure_logging"]


class ContextFilter(logging.Filter):
    """Adds the RPC's request id and caller, and the process id (several workers share one log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        request_id = current_request_id.get()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        caller = current_caller.get()
        if caller and not hasattr(record, "caller"):
            record.caller = caller
        record.pid = _pid
        return True


def _note_pid() -> None:
    global _pid  # noqa: PLW0603 - one value per process, renewed in a forked child
    _pid = os.getpid()


# The process id, read once (a system call per log line otherwise) and again in a forked child.
_pid = os.getpid()
os.register_at_fork(after_in_child=_note_pid)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
    # One encoder for every line: json.dumps with options builds a new one per call.
    _encode = json.JSONEncoder(default=str, ensure_ascii=False).encode

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the part up to the second is rendered once per second."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def render(self, created: float, logger: str, message: str, fields: dict[str, object]) -> str:
        """The line :meth:`format` makes of an INFO record with these ``extra`` fields (after ContextFilter)."""
        return self._encode(
            {"time": self._time(created), "level": "info", "logger": logger, "message": message, **fields, "pid": _pid}
        )

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        entry: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        standard = self._STANDARD
        for key, value in record.__dict__.items():
            if key not in standard and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry)


class TurnBuffered(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines logged during one turn of the event loop leave in one write, at the end of that turn.

    Under load every VerifyResponse logs an audit line, and a write (plus, for
    a watched file, a stat) per line costs more than the line itself. Lines
    logged outside the event loop's thread (start-up, LDAP worker threads) are
    written at once, after whatever the loop's turn holds so far; so is every
    line when nothing is buffered. Nothing waits beyond the current turn.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lines: list[str] = []
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop running in this thread, if any.

        asyncio.get_running_loop() makes a getpid() system call each time (Python 3.11): the
        answer is kept with its thread, and a loop running in this thread is the one we are in.
        """
        loop = self._loop
        if loop is not None and self._loop_thread == threading.get_ident() and loop.is_running():
            return loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._loop, self._loop_thread = loop, threading.get_ident()
        return loop

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` now; write it at the end of this turn of the loop (or now, outside it)."""
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: a bad record never breaks the caller
            self.handleError(record)
            return
        loop = self.running_loop()
        if loop is not None:
            self.emit_line(line, loop)
            return
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line + self.terminator)
        self._write_lines(record)

    def emit_line(self, line: str, loop: asyncio.AbstractEventLoop) -> None:
        """Take a line already rendered (see :func:`fast_lines`) in ``loop``, as :meth:`emit` takes a record."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line + self.terminator)
            if not self._flush_due:
                self._flush_due = True
                loop.call_soon(self._write_lines, None)

    def _write_lines(self, record: logging.LogRecord | None) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_due = False
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                self._write("".join(lines))
            except Exception:
                self.handleError(record or logging.makeLogRecord({"msg": "(lines of one turn)"}))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.flush()

    def close(self) -> None:
        """Write what is buffered, then close."""
        if self.stream is not None:
            self._write_lines(None)
        super().close()


class _TurnBufferedFile(TurnBuffered, logging.handlers.WatchedFileHandler):
    """A file that logrotate may move (WatchedFileHandler reopens it), checked once per write."""

    def _write(self, text: str) -> None:
        self.reopenIfNeeded()
        super()._write(text)


def fast_lines(logger: logging.Logger) -> tuple[JsonFormatter, list[TurnBuffered]] | None:
    """Where an INFO line of ``logger`` goes, if it can skip logging's record machinery; else None.

    So it can when the line would reach only :class:`TurnBuffered` handlers
    that format with :class:`JsonFormatter`, filter with :class:`ContextFilter`
    alone and take INFO (the setup :func:`configure_logging` makes). Anything
    else (a test's capture handler, a site's own logging setup) gets records.
    """
    if not logger.isEnabledFor(logging.INFO) or logger.filters:
        return None
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    formatter = None
    for handler in handlers:
        if (
            not isinstance(handler, TurnBuffered)
            or handler.level > logging.INFO
            or not isinstance(handler.formatter, JsonFormatter)
            or any(not isinstance(f, ContextFilter) for f in handler.filters)
        ):
            return None
        formatter = handler.formatter
    if formatter is None:
        return None
    return formatter, [handler for handler in handlers if isinstance(handler, TurnBuffered)]


def configure_logging(level: str, audit_file: Path | None = None) -> None:
    """Send every log line to stderr as JSON at ``level``; audit lines also to ``audit_file`` if set."""
    # The JSON lines carry none of the caller's file, line, thread or process name: skip
    # computing them for every record (walking the stack for the caller is the dearest part).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = TurnBuffered(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.handlers[:] = []
    audit.setLevel(logging.INFO)  # decisions are logged whatever the general level
    if audit_file is not None:
        # WatchedFileHandler reopens the file after logrotate moves it (fail2ban reads it).
        file_handler = _TurnBufferedFile(audit_file, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        file_handler.addFilter(ContextFilter())
        audit.addHandler(file_handler)
