"""A session's input transcription: chosen from the request and the setting, sent as stored."""

from __future__ import annotations

from typing import Any

import pytest

from broker.db.models import SessionRow
from broker.errors import ValidationFailedError
from broker.session.offer import provider_session_config
from broker.session.service import CreateSessionRequest
from broker.session.transcription import choose
from broker.settings import Settings, SettingsError
from broker.tools.registry import ToolRegistry

DEFAULT = "gpt-4o-mini-transcribe"


def chosen(body: dict[str, Any], default_model: str | None = DEFAULT) -> dict[str, str] | None:
    request = CreateSessionRequest.model_validate(body)
    return choose(
        request.input_transcription,
        given="input_transcription" in request.model_fields_set,
        default_model=default_model,
    )


def test_absent_null_and_an_object_choose_differently() -> None:
    assert chosen({}) == {"model": DEFAULT}
    assert chosen({}, default_model=None) is None
    assert chosen({"input_transcription": None}) is None
    assert chosen({"input_transcription": {}}) == {"model": DEFAULT}
    assert chosen({"input_transcription": {"language": "en", "prompt": "SKU"}}) == {
        "model": DEFAULT,
        "language": "en",
        "prompt": "SKU",
    }
    assert chosen({"input_transcription": {"model": "whisper-1"}}, default_model=None) == {
        "model": "whisper-1"
    }


def test_an_object_without_a_model_needs_the_setting() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        chosen({"input_transcription": {"language": "en"}}, default_model=None)
    assert caught.value.code == "transcription_model_required"


def row(transcription: dict[str, str] | None) -> SessionRow:
    return SessionRow(
        model="gpt-realtime",
        instructions="Help.",
        voice="marin",
        tools=[],
        input_transcription=transcription,
    )


def test_the_provider_gets_the_stored_transcription_and_nothing_when_there_is_none() -> None:
    registry = ToolRegistry({})
    on = provider_session_config(registry, row({"model": "whisper-1", "language": "en"}))
    assert on["audio"] == {
        "input": {"transcription": {"model": "whisper-1", "language": "en"}},
        "output": {"voice": "marin"},
    }
    off = provider_session_config(registry, row(None))
    assert off["audio"] == {"output": {"voice": "marin"}}


def test_the_setting_is_off_with_off_and_refuses_what_is_no_model_name() -> None:
    key = {"BROKER_SIGNING_KEY": "k" * 40}
    assert Settings.from_env(key).input_transcription_model == DEFAULT
    for off in ("off", " off "):
        env = {**key, "BROKER_INPUT_TRANSCRIPTION_MODEL": off}
        assert Settings.from_env(env).input_transcription_model is None
    # An empty variable is an unset one (every setting's rule): the default applies.
    env = {**key, "BROKER_INPUT_TRANSCRIPTION_MODEL": ""}
    assert Settings.from_env(env).input_transcription_model == DEFAULT
    env = {**key, "BROKER_INPUT_TRANSCRIPTION_MODEL": "whisper-1"}
    assert Settings.from_env(env).input_transcription_model == "whisper-1"
    for bad in ("gpt 4o", "-x", "m" * 101):
        with pytest.raises(SettingsError, match="BROKER_INPUT_TRANSCRIPTION_MODEL must be"):
            Settings.from_env({**key, "BROKER_INPUT_TRANSCRIPTION_MODEL": bad})
