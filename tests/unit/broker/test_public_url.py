"""``BROKER_PUBLIC_URL``: the absolute base of the URLs in the create response."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Settings, SettingsError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def test_unset_by_default_so_development_derives_it(tmp_path: Path) -> None:
    assert Settings.from_env(_env(tmp_path)).public_url is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://broker.example.com", "https://broker.example.com"),
        ("https://broker.example.com/", "https://broker.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://example.com/voice/broker/", "https://example.com/voice/broker"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    ],
)
def test_an_absolute_url_is_kept_without_its_trailing_slash(
    tmp_path: Path, given: str, kept: str
) -> None:
    assert Settings.from_env(_env(tmp_path, BROKER_PUBLIC_URL=given)).public_url == kept


@pytest.mark.parametrize(
    "given",
    [
        "broker.example.com",
        "/broker",
        "ftp://broker.example.com",
        "https://",
        "https://broker.example.com/?x=1",
        "https://broker.example.com?",
        "https://broker.example.com/#top",
        "https://user:pass@broker.example.com",
        "https://broker.example.com:99999",
    ],
)
def test_anything_else_is_refused_naming_the_variable(tmp_path: Path, given: str) -> None:
    with pytest.raises(SettingsError, match="BROKER_PUBLIC_URL") as err:
        Settings.from_env(_env(tmp_path, BROKER_PUBLIC_URL=given))
    assert "absolute" in str(err.value) or "port" in str(err.value)


def test_a_directly_built_settings_checks_it_too(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BROKER_PUBLIC_URL"):
        Settings(signing_key_file=tmp_path / "key", public_url="broker.example.com")
