"""Settings from the environment, and that secrets stay out of logs and reprs."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from broker import Secret, Settings, SettingsError
from broker.logs import SecretRedactingFilter
from broker.record.event_log import redact_event


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def test_defaults_run_the_builtin_provider(tmp_path: Path) -> None:
    settings = Settings.from_env(_env(tmp_path))
    assert settings.uses_builtin_provider and settings.provider_base_url is None
    assert settings.port == 8080 and settings.client_secret_ttl == 300


def test_dev_signing_key_is_persisted_private(tmp_path: Path) -> None:
    first = Settings.from_env(_env(tmp_path)).signing_key
    second = Settings.from_env(_env(tmp_path)).signing_key
    assert first == second
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_openai_key_implies_openai_base_url(tmp_path: Path) -> None:
    settings = Settings.from_env(_env(tmp_path, OPENAI_API_KEY="sk-live-123456789"))
    assert settings.provider_base_url == "https://api.openai.com/v1"
    assert "sk-live" not in repr(settings)


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"BROKER_PORT": "http"}, "BROKER_PORT"),
        ({"BROKER_CLIENT_SECRET_TTL": "5"}, "BROKER_CLIENT_SECRET_TTL"),
        ({"BROKER_PROVIDER_BASE_URL": "http://x/v1"}, "BROKER_PROVIDER_BASE_URL"),
        ({"BROKER_ADMIN_KEY": "short"}, "BROKER_ADMIN_KEY"),
        ({"BROKER_PROVIDER_TIMEOUT": "-1"}, "BROKER_PROVIDER_TIMEOUT"),
    ],
)
def test_bad_values_name_the_variable_not_the_value(
    tmp_path: Path, extra: dict[str, str], name: str
) -> None:
    with pytest.raises(SettingsError, match=name) as err:
        Settings.from_env(_env(tmp_path, **extra))
    assert all(v not in str(err.value) for v in extra.values() if len(v) > 3)


def test_log_filter_redacts_known_secrets(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("sk-super-secret-value")
    logger = logging.getLogger("test.redaction")
    caplog.handler.addFilter(SecretRedactingFilter([secret, None]))
    logger.warning("oops key=%s", "sk-super-secret-value")
    assert "sk-super-secret-value" not in caplog.text and "[REDACTED]" in caplog.text


def test_audio_payloads_are_summarised() -> None:
    event = {"type": "input_audio_buffer.append", "audio": "QUJD" * 100}
    assert redact_event(event)["audio"] == {"redacted": "audio", "base64_chars": 400}
    other = {"type": "response.done", "response": {}}
    assert redact_event(other) is other


def test_log_filter_redacts_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("sk-in-a-traceback-123")
    caplog.handler.addFilter(SecretRedactingFilter([secret]))
    try:
        raise RuntimeError("failed with sk-in-a-traceback-123")
    except RuntimeError:
        logging.getLogger("test.redaction").exception("boom")
    assert "sk-in-a-traceback-123" not in caplog.text
    assert "failed with [REDACTED]" in caplog.text


def test_database_password_is_not_in_repr(tmp_path: Path) -> None:
    settings = Settings.from_env(
        _env(tmp_path, BROKER_DATABASE_URL="postgresql+asyncpg://u:hunter2pass@db/x")
    )
    assert "hunter2pass" not in repr(settings)
    assert settings.database_password == Secret("hunter2pass")


def test_log_filter_redacts_minted_secrets_by_shape(caplog: pytest.LogCaptureFixture) -> None:
    """Client secrets and API keys are minted at run time; the filter knows their shapes."""
    from broker.auth.principals import mint_client_secret, new_api_key

    token, _ = mint_client_secret("sess_1", Secret("k" * 32), 300)
    api_key = new_api_key()
    caplog.handler.addFilter(SecretRedactingFilter([]))
    logging.getLogger("test.redaction").warning(
        "token=%s key=%s ek=%s session=%s", token, api_key, "ek_" + "a1" * 16, "sess_1"
    )
    assert token not in caplog.text and api_key not in caplog.text and "ek_a1a1" not in caplog.text
    assert caplog.text.count("[REDACTED]") == 3
    assert "session=sess_1" in caplog.text


@pytest.mark.parametrize("content", ["", "short\n"])
def test_a_dev_key_file_too_short_is_replaced_atomically_and_private(
    tmp_path: Path, content: str
) -> None:
    """An existing empty (or too short) key file is replaced by a new 0600 file, never
    rewritten in place keeping its old mode; no temporary file is left behind."""
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    before = path.stat().st_ino
    key = Settings.from_env(_env(tmp_path)).signing_key
    assert len(key.reveal()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != before  # a new file renamed over, not the old one rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    """A signing key others could read may have leaked: the broker refuses to start with it
    (the message names the file and the fix, never the key)."""
    path = tmp_path / "key"
    path.write_text("k" * 40 + "\n")
    path.chmod(mode)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(_env(tmp_path))
    assert str(path) in str(raised.value) and "k" * 40 not in str(raised.value)


def test_console_logs_escape_control_characters() -> None:
    """Text a page chose (a tool name from the bridge's URL) cannot forge a console log line
    or send terminal escapes: CR, LF, ESC and the other controls come out escaped."""
    from broker.logs import ConsoleFormatter

    record = logging.LogRecord(
        "broker.api.tools",
        logging.WARNING,
        __file__,
        1,
        "bridge refused tool=%s",
        ("x\r\n12:00:00 INFO    broker: all good\x1b[2J",),
        None,
    )
    record.session_id = "sess\n1"
    text = ConsoleFormatter().format(record)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "x\\r\\n12:00:00 INFO" in text and "session_id=sess\\n1" in text


def test_sql_parameters_stay_out_of_debug_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--log-level DEBUG`` must not write SQL parameters (tool arguments, transcripts, key
    hashes): the engine hides them and the drivers' loggers stay quiet."""
    import asyncio

    from sqlalchemy import text

    from broker.db.engine import create_engine
    from broker.logs import LogFormat, configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("DEBUG", [], LogFormat.JSON)
        root.addHandler(caplog.handler)
        secret_argument = "card-4111-1111-1111-1111"

        async def query() -> None:
            engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("CREATE TABLE t (v TEXT)"))
                    await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": secret_argument})
                    await conn.execute(text("INSERT INTO nope VALUES (:v)"), {"v": secret_argument})
            except Exception as exc:  # the statement fails: its message must not carry it either
                assert secret_argument not in str(exc)
            finally:
                await engine.dispose()

        asyncio.run(query())
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for name in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert secret_argument not in caplog.text
