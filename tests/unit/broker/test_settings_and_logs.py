"""Settings from the environment, and that secrets stay out of logs and reprs."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from broker import Secret, Settings, SettingsError
from broker.events_log import redact_event
from broker.logs import SecretRedactingFilter


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
    from broker.auth import mint_client_secret, new_api_key

    token, _ = mint_client_secret("sess_1", Secret("k" * 32), 300)
    api_key = new_api_key()
    caplog.handler.addFilter(SecretRedactingFilter([]))
    logging.getLogger("test.redaction").warning(
        "token=%s key=%s ek=%s session=%s", token, api_key, "ek_" + "a1" * 16, "sess_1"
    )
    assert token not in caplog.text and api_key not in caplog.text and "ek_a1a1" not in caplog.text
    assert caplog.text.count("[REDACTED]") == 3
    assert "session=sess_1" in caplog.text
