"""Hygiene on the real stack (issue 14, items 13-17): edge-of-calendar query times, log lines
a page cannot forge, SQL parameters kept out of logs, key files only the broker can read,
and scopes that say what they grant."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from broker import Settings, SettingsError
from broker.auth.principals import hash_api_key
from broker.cli import main
from broker.db.migrate import upgrade_database
from broker.logs import LogFormat, configure_logging
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import connect_browser

# --- item 13: a time at the calendar's edge is a bad query, not a 500 -------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        # Year 1 at +14:00 is before year 1 in UTC: normalising it overflowed into a 500.
        ("created_after=0001-01-01T00:00:00%2B14:00", "created_after"),
        ("created_before=9999-12-31T23:59:59-14:00", "created_before"),
        ("created_after=0001-01-01T00:00:00%2B23:59", "created_after"),
    ],
)
async def test_session_list_times_past_the_calendar_are_400(
    broker: RunningBroker, query: str, param: str
) -> None:
    """A session-list time that cannot be normalised to UTC is 400 ``invalid_query`` naming
    the parameter, never a 500."""
    reply = await broker.request("GET", f"/api/v1/sessions?{query}")
    assert (reply.status, reply.code) == (400, "invalid_query"), reply.text
    assert reply.json()["param"] == param


async def test_a_cursor_at_the_calendar_edge_is_400_or_a_page(broker: RunningBroker) -> None:
    """A forged cursor carrying an edge time is refused or read, never a 500."""
    for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        cursor = base64.urlsafe_b64encode(json.dumps([moment, "sess_x"]).encode()).decode()
        reply = await broker.request("GET", f"/api/v1/sessions?cursor={cursor.rstrip('=')}")
        assert reply.status in (200, 400), reply.text


# --- items 14 and 15: what the broker's own log handler writes ---------------------------------

LogSetup = Callable[[str, LogFormat], io.StringIO]


@pytest.fixture
def broker_log() -> Iterator[LogSetup]:
    """``configure_logging`` as ``broker serve`` calls it, writing to a buffer; the test's
    other handlers (pytest's, the leak watch) stay attached, and everything is put back."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    touched = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "aiohttp.access")
    saved_levels = {name: logging.getLogger(name).level for name in touched + ("aioice", "aiortc")}

    def setup(level: str, fmt: LogFormat) -> io.StringIO:
        configure_logging(level, [], fmt)
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        stream = io.StringIO()
        handler.setStream(stream)
        root.handlers.extend(saved_handlers)
        return stream

    try:
        yield setup
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


FORGED = "\r\n12:00:00 INFO    broker.tools.bridge: forged-line all clear\x1b[2J\x85\u2028"


async def test_a_tool_name_from_the_bridge_path_cannot_forge_a_console_line(
    make_broker: BrokerFactory, broker_log: LogSetup
) -> None:
    """``--dev`` console logs escape control characters (CR, LF, ESC, C1, U+2028) in text a
    page chose: a URL-decoded tool name in the bridge path stays inside its own record."""
    stream = broker_log("INFO", LogFormat.CONSOLE)
    broker = await make_broker()
    session = await broker.create_session(sideband=False)
    browser = await connect_browser(broker, session)
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/tools/{quote('x' + FORGED, safe='')}",
            token=session["client_secret"]["value"],
            json_body={"call_id": "call_1", "arguments": "{}"},
        )
    finally:
        await browser.close()
    assert (reply.status, reply.code) == (403, "tool_not_allowed")
    text = stream.getvalue()
    assert "forged-line" in text, text  # the refusal was logged, with the name in it
    for raw in ("\r", "\x1b", "\x85", "\u2028"):
        assert raw not in text
    for line in text.split("\n"):
        assert "forged-line" not in line or re.match(r"\d\d:\d\d:\d\d WARNING ", line), line
        assert not line.startswith("12:00:00 INFO    broker.tools.bridge: forged-line")


def test_a_traceback_quoting_a_page_cannot_forge_a_console_line() -> None:
    """A traceback keeps its line breaks on the console, but an exception message quoting a
    page's text cannot start a line of its own: every line after a record's first is
    indented, with its control characters escaped."""
    from broker.logs import ConsoleFormatter

    try:
        raise ValueError("unknown tool x" + FORGED)
    except ValueError:
        record = logging.LogRecord(
            "broker.api", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    lines = ConsoleFormatter().format(record).split("\n")
    assert re.match(r"\d\d:\d\d:\d\d ERROR ", lines[0])
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:])
    assert not any(raw in line for line in lines for raw in ("\r", "\x1b", "\x85", "\u2028"))


def test_json_log_lines_cannot_be_split_by_a_message() -> None:
    """JSON log lines escape what json leaves raw with ``ensure_ascii`` off (DEL, C1 controls
    such as NEL, U+2028/U+2029): one record is one line for any line splitter, and the
    message still reads back exactly."""
    from broker.logs import JsonFormatter

    message = "tool=x" + FORGED + "\x7f\x9b\u2029"
    record = logging.LogRecord(
        "broker.sessions", logging.WARNING, __file__, 1, "%s", (message,), None
    )
    text = JsonFormatter().format(record)
    assert len(text.splitlines()) == 1
    assert json.loads(text)["message"] == message


async def test_debug_logs_never_carry_sql_parameters(
    make_broker: BrokerFactory, broker_log: LogSetup, db_url: str, tmp_path: Path
) -> None:
    """``--log-level DEBUG`` writes no SQL parameter: not a tool's arguments or output, not a
    key hash, on the serving path or the migration path (the drivers' and SQLAlchemy's
    loggers stay quiet and the engines hide parameters)."""
    stream = broker_log("DEBUG", LogFormat.JSON)
    await asyncio.to_thread(upgrade_database, f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    broker = await make_broker()
    key = await broker.new_key("sessions:create", "monitor:read")
    marker = "order-7f3c1e0d9b"
    session = await broker.create_session(sideband=False)
    browser = await connect_browser(broker, session)
    try:
        reply = await broker.bridge(session, "lookup_order", "call_sql", {"order_id": marker})
        assert reply.status == 200, reply.text
        listed = await broker.request("GET", "/api/v1/sessions", token=key)
        assert listed.status == 200, listed.text
    finally:
        await browser.close()
    text = stream.getvalue()
    assert text, "nothing was logged at DEBUG"
    loggers = {json.loads(line)["logger"] for line in text.splitlines()}
    assert not {name for name in loggers if name.startswith(("sqlalchemy", "aiosqlite"))}
    for value in (marker, hash_api_key(key), reply.json()["output"]):
        assert value not in text


# --- item 16: key files only the broker can read ----------------------------------------------


def _key_env(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("BROKER_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BROKER_SIGNING_KEY_FILE", str(path))
    monkeypatch.setenv("BROKER_DATABASE_URL", f"sqlite+aiosqlite:///{path.parent / 'b.db'}")


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640])
def test_a_readable_empty_key_file_stops_the_broker_and_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    """A pre-existing empty signing key file others can read is never filled in place (the
    key would be readable): the broker refuses to start, says which file and how to fix it,
    and leaves the file as it was."""
    path = tmp_path / ".broker" / "signing.key"
    path.parent.mkdir()
    path.write_text("")
    path.chmod(mode)
    _key_env(path, monkeypatch)
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "chmod 600" in err
    assert path.read_text() == "" and stat.S_IMODE(path.stat().st_mode) == mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.key"]


def test_a_new_key_goes_in_a_private_directory_and_file(tmp_path: Path) -> None:
    """A key the broker makes is 0600 in a directory it makes 0700, and nothing else is left."""
    path = tmp_path / ".broker" / "signing.key"
    key = Settings.from_env({"BROKER_SIGNING_KEY_FILE": str(path)}).signing_key
    assert len(key.reveal()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]
    # Read back as it is on the next start.
    again = Settings.from_env({"BROKER_SIGNING_KEY_FILE": str(path)}).signing_key
    assert again == key


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_key_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    """A 0600 key file that belongs to another user is theirs to read: refused, not used."""
    path = tmp_path / "signing.key"
    path.write_text("k" * 40 + "\n")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(SettingsError, match="another user") as raised:
        Settings.from_env({"BROKER_SIGNING_KEY_FILE": str(path)})
    assert "k" * 40 not in str(raised.value)


# --- item 17: scopes say what they grant wherever scopes are listed --------------------------


async def test_the_trusted_scope_grants_trusted_sessions_only(broker: RunningBroker) -> None:
    """``sessions:trusted`` is no longer reserved (trusted server sessions use it), and grants
    nothing else: a browser session, the session list and the audit trail stay refused. The
    API's unknown-scope refusal lists no reserved scope."""
    reply = await broker.request(
        "POST", "/api/v1/keys", json_body={"name": "x", "scopes": ["root"]}
    )
    assert (reply.status, reply.code) == (422, "unknown_scope")
    body = reply.json()
    assert "reserved" not in body["detail"]
    assert body["reserved"] == []
    assert {"audit:read", "sessions:trusted"} <= set(body["scopes"])
    held = await broker.new_key("sessions:trusted")
    create = await broker.request("POST", "/api/v1/sessions", token=held, json_body={})
    assert (create.status, create.code) == (403, "insufficient_scope")
    listing = await broker.request("GET", "/api/v1/sessions", token=held)
    assert (listing.status, listing.code) == (403, "insufficient_scope")
    audit = await broker.request("GET", "/api/v1/audit", token=held)
    assert (audit.status, audit.code) == (403, "insufficient_scope")


def test_keys_create_help_lists_every_scope(capsys: pytest.CaptureFixture[str]) -> None:
    """``broker keys create --help`` lists every scope, none of them reserved."""
    with pytest.raises(SystemExit):
        main(["keys", "create", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sessions:trusted" in text
    assert "audit:read, " in text
    assert "reserved" not in text


def test_the_readme_says_what_the_trusted_scope_grants() -> None:
    """The README's scope list names ``sessions:trusted`` and what it is for."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    credentials = readme.split("### Credentials", 1)[1].split("###", 1)[0]
    flat = " ".join(credentials.split())
    assert "grants nothing yet**" not in flat
    assert re.search(r"`sessions:trusted` creates \[trusted server sessions\]", flat)
    assert "`audit:read`" in flat
