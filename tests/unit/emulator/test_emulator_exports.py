"""The emulator package's public surface (docs/conventions.md rule 1)."""

from __future__ import annotations

import dataclasses

import pytest

import emulator


def test_all_is_sorted_and_exact() -> None:
    """`__all__` is sorted and names exactly the surface other packages may import."""
    assert emulator.__all__ == sorted(emulator.__all__)
    assert set(emulator.__all__) == {
        "CALL_REGISTRY",
        "CLIENT_SECRETS",
        "Call",
        "CallErrorFault",
        "CallRegistry",
        "ClientSecret",
        "ClientSecretStore",
        "EmulatorSettings",
        "FAULTS",
        "FaultConfig",
        "Faults",
        "ReceivedClientEvent",
        "SessionUpdateErrorFault",
        "create_app",
    }
    for name in emulator.__all__:
        assert hasattr(emulator, name)


def test_settings_defaults_and_secret_repr() -> None:
    """Settings are frozen, have the documented defaults and never show the key in repr."""
    settings = emulator.EmulatorSettings(api_key="sk-secret-value")
    assert settings.sideband_ready_delay == 0.0
    assert settings.token_interval == 0.002
    assert settings.replay_session_created_to_sideband is False
    assert settings.speech == "auto"
    assert settings.flavor == "openai"
    assert "sk-secret-value" not in repr(settings)
    assert dataclasses.is_dataclass(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_key = "x"  # type: ignore[misc]


def test_settings_refuse_an_unknown_flavor() -> None:
    """A misspelt flavour fails at construction, not as a missing route later."""
    with pytest.raises(ValueError, match="flavor"):
        emulator.EmulatorSettings(api_key="sk-x", flavor="Azure")  # type: ignore[arg-type]
