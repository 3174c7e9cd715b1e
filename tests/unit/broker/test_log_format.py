"""Log lines: JSON objects (or console text) carrying the call they belong to, never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from broker.cli import main
from broker.logs import (
    ConsoleFormatter,
    ContextFilter,
    JsonFormatter,
    LogFormat,
    SecretRedactingFilter,
    bind_call,
    bound,
)
from broker.settings import Secret

SECRET = "sk-test-0123456789abcdef"


Stream = tuple[logging.Logger, io.StringIO]


@pytest.fixture
def stream() -> Iterator[Stream]:
    """A logger writing through the broker's filters into a string buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(SecretRedactingFilter([Secret(SECRET)]))
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.log_format")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_call_task_tags_its_records_and_its_child_tasks_records(stream: Stream) -> None:
    logger, buffer = stream

    async def supervised() -> None:
        bind_call("sess_1", "rtc_1")
        logger.info("attached")
        await asyncio.create_task(tool())

    async def tool() -> None:
        logger.warning("tool ran")

    await asyncio.create_task(supervised())
    logger.info("outside")  # the call's binding stayed in its task

    attached, tool_line, outside = lines(buffer)
    assert attached["message"] == "attached"
    assert (attached["session_id"], attached["call_id"]) == ("sess_1", "rtc_1")
    assert (tool_line["session_id"], tool_line["call_id"], tool_line["level"]) == (
        "sess_1",
        "rtc_1",
        "warning",
    )
    assert "session_id" not in outside and "call_id" not in outside
    assert set(attached) == {"ts", "level", "logger", "message", "session_id", "call_id"}
    assert str(attached["ts"]).endswith("+00:00")


def test_a_request_binding_ends_with_the_block_and_extra_wins(stream: Stream) -> None:
    logger, buffer = stream
    with bound("sess_req"):
        logger.info("in request")
        logger.info("explicit", extra={"session_id": "sess_other"})
    logger.info("after")
    in_request, explicit, after = lines(buffer)
    assert in_request["session_id"] == "sess_req"
    assert explicit["session_id"] == "sess_other"
    assert "session_id" not in after


def test_json_lines_redact_secrets_in_messages_and_tracebacks(stream: Stream) -> None:
    logger, buffer = stream
    logger.info("key is %s", SECRET)
    try:
        raise RuntimeError(f"provider said {SECRET}\nsecond line")
    except RuntimeError:
        logger.exception("failed")
    text = buffer.getvalue()
    assert SECRET not in text
    message, failure = lines(buffer)
    assert message["message"] == "key is [REDACTED]"
    assert "RuntimeError: provider said [REDACTED]" in str(failure["exc"])
    assert len(text.splitlines()) == 2  # a multi-line traceback stays inside one JSON line


def test_console_lines_show_the_context_once() -> None:
    formatter = ConsoleFormatter()
    record = logging.LogRecord("broker.x", logging.INFO, __file__, 1, "tool ran", None, None)
    record.session_id, record.call_id = "sess_1", "rtc_1"
    assert formatter.format(record).endswith("broker.x: tool ran [session_id=sess_1 call_id=rtc_1]")
    already = logging.LogRecord(
        "broker.x", logging.INFO, __file__, 1, "lost session_id=sess_1", None, None
    )
    already.session_id, already.call_id = "sess_1", None
    assert formatter.format(already).endswith("lost session_id=sess_1")


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["serve"], None, LogFormat.JSON),
        (["serve", "--dev"], None, LogFormat.CONSOLE),
        (["--log-format", "json", "serve", "--dev"], None, LogFormat.JSON),
        (["serve"], "console", LogFormat.CONSOLE),
        (["migrate"], None, LogFormat.CONSOLE),
    ],
)
def test_serve_logs_json_and_dev_logs_text(
    argv: list[str], env: str | None, expected: LogFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.cli

    chosen: list[LogFormat] = []

    def fake_logging(level: str, secrets: object, fmt: LogFormat = LogFormat.CONSOLE) -> None:
        chosen.append(fmt)

    if env is not None:
        monkeypatch.setenv("BROKER_LOG_FORMAT", env)
    else:
        monkeypatch.delenv("BROKER_LOG_FORMAT", raising=False)
    monkeypatch.setattr(broker.cli, "configure_logging", fake_logging)
    monkeypatch.setattr(broker.cli, "_serve", lambda settings, dev, fmt: None)
    monkeypatch.setattr(broker.cli, "upgrade_database", lambda url: None)
    assert main(argv) == 0
    assert chosen == [expected]


def test_an_unknown_log_format_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_LOG_FORMAT", "xml")
    assert main(["serve"]) == 2
    assert "BROKER_LOG_FORMAT must be json or console" in capsys.readouterr().err
