"""Where settings come from (the environment over ``.env``), and what a refusal may say."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import get_args

import pytest

from broker import Secret, Settings, SettingsError
from broker.logs import LogFormat

KEY = "k" * 32
WEBHOOK = {"BROKER_WEBHOOK_URL": "https://hooks.example/in"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def _refusal(env: dict[str, str], env_file: Path | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env, env_file)
    return raised.value


def _everything_said(error: BaseException) -> str:
    """The message, the repr and the whole printed traceback, chained exceptions included."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


def test_dotenv_fills_in_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\nBROKER_PORT=9001\nBROKER_HOST=0.0.0.0\nBROKER_CLIENT_SECRET_TTL=600\n"
    )
    settings = Settings.from_env(_env(tmp_path, BROKER_PORT="9002", BROKER_HOST=""), dotenv)
    # The environment wins; an empty variable counts as unset, so .env still applies under it.
    assert (settings.port, settings.host, settings.client_secret_ttl) == (9002, "0.0.0.0", 600)


def test_the_process_environment_reads_dotenv_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("BROKER_PORT", "BROKER_TAMPER_POLICY", "BROKER_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_SIGNING_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("BROKER_PORT", "9100")
    (tmp_path / ".env").write_text("BROKER_PORT=9200\nBROKER_TAMPER_POLICY=hangup\n")
    settings = Settings.from_env()
    assert (settings.port, settings.tamper_policy.value) == (9100, "hangup")


def test_a_given_mapping_and_a_direct_build_ignore_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test's settings are exactly what it says: no shell variable, no developer's .env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BROKER_PORT", "9300")
    (tmp_path / ".env").write_text("BROKER_HOST=0.0.0.0\n")
    assert Settings.from_env(_env(tmp_path)).port == 8080
    built = Settings(signing_key=Secret(KEY))
    assert (built.port, built.host) == (8080, "127.0.0.1")


def test_the_provider_key_falls_back_to_openai_api_key(tmp_path: Path) -> None:
    fallback = Settings.from_env(
        _env(tmp_path, BROKER_PROVIDER_API_KEY="", OPENAI_API_KEY="sk-openai-0123456789")
    )
    assert fallback.provider_api_key == Secret("sk-openai-0123456789")
    assert fallback.provider_base_url == "https://api.openai.com/v1"
    both = Settings.from_env(
        _env(
            tmp_path,
            BROKER_PROVIDER_API_KEY="sk-broker-0123456789",
            OPENAI_API_KEY="sk-openai-0123456789",
            BROKER_PROVIDER_BASE_URL="http://127.0.0.1:9/v1",
        )
    )
    assert both.provider_api_key == Secret("sk-broker-0123456789")
    assert both.provider_base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"BROKER_ADMIN_KEY": "tiny-admin-key"}, "BROKER_ADMIN_KEY must be at least 16"),
        ({"BROKER_SIGNING_KEY": "signing-key-too-short"}, "BROKER_SIGNING_KEY must be at least"),
        (
            {**WEBHOOK, "BROKER_WEBHOOK_SECRET": "webhook-secret-too-short"},
            "BROKER_WEBHOOK_SECRET must be at least 32",
        ),
        (
            {**WEBHOOK, "BROKER_WEBHOOK_SECRET": "whsec_not*base64*webhook*secret"},
            "BROKER_WEBHOOK_SECRET is whsec_ but not base64",
        ),
        (
            # A good secret next to a bad value: the refusal of the other value shows nothing.
            {"BROKER_ADMIN_KEY": "a-perfectly-good-admin-key", "BROKER_PORT": "eighty"},
            "BROKER_PORT must be an integer",
        ),
    ],
)
def test_a_refusal_never_shows_a_secret(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    error = _refusal(_env(tmp_path, **extra))
    assert message in str(error)
    said = _everything_said(error)
    for value in extra.values():
        if not value.startswith("https://"):
            assert value not in said
    # pydantic's own error holds every input: it is neither the cause nor the context.
    assert error.__cause__ is None and error.__context__ is None


def test_a_bad_secret_from_dotenv_is_not_shown_either(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BROKER_ADMIN_KEY=dotenv-admin\n")
    error = _refusal(_env(tmp_path), dotenv)
    assert "BROKER_ADMIN_KEY" in str(error) and "dotenv-admin" not in _everything_said(error)


def test_a_direct_build_is_checked_and_refused_the_same_way() -> None:
    tiny = "tiny-admin-key"  # (a name, so the traceback's source line does not show it)
    with pytest.raises(SettingsError, match="BROKER_ADMIN_KEY must be at least 16") as raised:
        Settings(signing_key=Secret(KEY), admin_key=Secret(tiny))
    assert tiny not in _everything_said(raised.value)
    with pytest.raises(SettingsError, match="prot is not a setting"):
        Settings(signing_key=Secret(KEY), prot=9000)


def test_replace_makes_a_checked_copy() -> None:
    settings = Settings(signing_key=Secret(KEY), admin_key=Secret("an-admin-key-long-enough"))
    demo = settings.replace(demo=True, port=9400)
    assert (demo.demo, demo.port, demo.admin_key) == (True, 9400, settings.admin_key)
    assert (settings.demo, settings.port) == (False, 8080)
    with pytest.raises(SettingsError, match="BROKER_CLIENT_SECRET_TTL must be between 30 and 3600"):
        settings.replace(client_secret_ttl=5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"BROKER_PROVIDER_TIMEOUT": "inf"}, "BROKER_PROVIDER_TIMEOUT must be a finite number"),
        ({"BROKER_BRIDGE_WAIT_TIMEOUT": "nan"}, "BROKER_BRIDGE_WAIT_TIMEOUT must be a finite"),
        ({"BROKER_PORT": "65536"}, "BROKER_PORT must be between 0 and 65535"),
        ({"BROKER_EMULATOR_PORT": "-1"}, "BROKER_EMULATOR_PORT must be between 0 and 65535"),
        ({"BROKER_LOG_FORMAT": "xml"}, "BROKER_LOG_FORMAT must be json or console"),
        ({"BROKER_TAMPER_POLICY": "ignore"}, "BROKER_TAMPER_POLICY must be revert or hangup"),
        ({"BROKER_DEMO": "maybe"}, "BROKER_DEMO must be 1/true/yes or 0/false/no"),
        ({"BROKER_SHUTDOWN_GRACE_S": "601"}, "BROKER_SHUTDOWN_GRACE_S must be positive, at most"),
        ({"BROKER_CALL_MAX_DURATION": "9"}, "BROKER_CALL_MAX_DURATION must be between 10 and"),
        ({"BROKER_CORS_ORIGINS": "https://a.example, *"}, "BROKER_CORS_ORIGINS must list exact"),
    ],
)
def test_each_refusal_names_the_variable_and_its_rule(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    assert message in str(_refusal(_env(tmp_path, **extra)))


def test_every_bad_value_is_named_at_once(tmp_path: Path) -> None:
    error = str(_refusal(_env(tmp_path, BROKER_PORT="x", BROKER_CLIENT_SECRET_TTL="5")))
    assert "BROKER_PORT must be an integer" in error
    assert "BROKER_CLIENT_SECRET_TTL must be between 30 and 3600" in error


def test_new_settings_read_their_variables(tmp_path: Path) -> None:
    settings = Settings.from_env(
        _env(tmp_path, BROKER_EMULATOR_PORT="9555", BROKER_LOG_FORMAT="console")
    )
    assert (settings.emulator_port, settings.log_format) == (9555, "console")
    assert (tmp_path / "key").exists()  # the signing key came from BROKER_SIGNING_KEY_FILE


def test_the_log_formats_are_the_loggers() -> None:
    choices = get_args(get_args(Settings.model_fields["log_format"].annotation)[0])
    assert set(choices) == {f.value for f in LogFormat}
