"""The JSON log lines and their turn-buffered handler."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

from sipauth.logs import JsonFormatter, TurnBuffered, _TurnBufferedFile


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_lines_of_one_turn_are_written_together_at_its_end() -> None:
    """Inside the event loop, lines wait for the end of the turn, then leave in order in one write."""
    stream = io.StringIO()
    writes: list[str] = []
    original = stream.write

    def write(text: str) -> int:
        writes.append(text)
        return original(text)

    stream.write = write  # type: ignore[method-assign]
    log = _logger(TurnBuffered(stream), "sipauth.test.turn")

    async def turn() -> str:
        for index in range(3):
            log.info("line", extra={"index": index})
        held = stream.getvalue()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return held

    held = asyncio.run(turn())
    assert held == ""
    assert len(writes) == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]


def test_lines_outside_the_loop_are_written_at_once() -> None:
    """Start-up and worker-thread lines are not held: there is no turn to wait for."""
    stream = io.StringIO()
    log = _logger(TurnBuffered(stream), "sipauth.test.now")
    log.info("starting", extra={"phase": "boot"})
    assert json.loads(stream.getvalue())["phase"] == "boot"


def test_close_writes_what_the_turn_still_holds(tmp_path: Path) -> None:
    """A handler closed before its turn ends (shutdown) loses no line, in a watched file too."""
    path = tmp_path / "audit.log"
    handler = _TurnBufferedFile(path, encoding="utf-8")
    log = _logger(handler, "sipauth.test.close")

    async def log_and_close() -> None:
        log.info("decision", extra={"verdict": "accept"})
        handler.close()

    asyncio.run(log_and_close())
    assert json.loads(path.read_text())["verdict"] == "accept"


def test_a_rotated_file_is_reopened(tmp_path: Path) -> None:
    """logrotate moves the audit file away: the next write goes to a new file at the same path."""
    path = tmp_path / "audit.log"
    handler = _TurnBufferedFile(path, encoding="utf-8")
    log = _logger(handler, "sipauth.test.rotate")
    log.info("first")
    path.rename(tmp_path / "audit.log.1")
    log.info("second")
    handler.close()
    assert json.loads(path.read_text())["message"] == "second"
    assert json.loads((tmp_path / "audit.log.1").read_text())["message"] == "first"


def test_audit_lines_rendered_directly_equal_those_logging_makes() -> None:
    """The audit fast path writes the very line logging would (same fields, order, escaping), only cheaper."""
    from sipauth.authenticator import Decision, Verdict, VerifyRequest
    from sipauth.digest import Algorithm
    from sipauth.logs import ContextFilter, fast_lines
    from sipauth.server import audit

    stream = io.StringIO()
    handler = TurnBuffered(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    log = logging.getLogger(audit.AUDIT_LOGGER)
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    request = VerifyRequest(method="REGISTER", request_uri="sip:example.test", source_ip="192.0.2.7")
    decision = Decision(
        verdict=Verdict.REJECT,
        reason="bad_credentials",
        realm="example.test",
        algorithm=Algorithm.SHA_256,
        claimed_user='J\u00e4s\u00f8n "the" \\ user',
        detail="wrong_password",
    )
    try:
        assert fast_lines(log) is not None
        audit.record_decision(request, decision, 0.0123)  # no event loop: through logging

        async def in_loop() -> None:
            audit.record_decision(request, decision, 0.0123)  # in the loop: rendered directly
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        asyncio.run(in_loop())
    finally:
        log.handlers[:], log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])
    through_logging, direct = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(through_logging) == list(direct)
    through_logging.pop("time"), direct.pop("time")
    assert through_logging == direct
    assert direct["user"] == 'J\u00e4s\u00f8n "the" \\ user'


def test_a_foreign_handler_gets_records() -> None:
    """A handler that is not sipauth's (a test's capture, a site's own setup) gets real records, not lines."""
    from sipauth.logs import fast_lines

    log = logging.getLogger("sipauth.test.foreign")
    log.handlers[:] = [logging.StreamHandler(io.StringIO())]
    log.propagate = False
    log.setLevel(logging.INFO)
    assert fast_lines(log) is None
