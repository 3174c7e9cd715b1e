"""``BROKER_PROVIDER=azure``: its endpoint, its credential (a key or a token command), the
WebRTC filter, and the combinations refused at start with a message naming variables only."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from broker import Secret, Settings, SettingsError

AZURE_KEY = "azure-resource-key-0123456789abcdef"
OPENAI_KEY = "sk-openai-0123456789abcdef"
ENDPOINT = "https://my-resource.openai.azure.com"
COMMAND = "az account get-access-token --resource https://cognitiveservices.azure.com -o tsv"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def _azure(tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env(_env(tmp_path, BROKER_PROVIDER="azure", **extra))


def test_the_resource_endpoint_becomes_the_v1_api_base(tmp_path: Path) -> None:
    for given in (ENDPOINT, ENDPOINT + "/", ENDPOINT + "/openai/v1", ENDPOINT + "/openai/v1/"):
        settings = _azure(tmp_path, AZURE_OPENAI_API_KEY=AZURE_KEY, BROKER_PROVIDER_BASE_URL=given)
        assert settings.provider_base_url == ENDPOINT + "/openai/v1", given
    assert settings.provider_api_key == Secret(AZURE_KEY)
    assert not settings.uses_builtin_provider
    assert settings.webrtc_filter, "the filter is on by default"
    # A checked copy keeps it all (replace re-validates every field).
    assert settings.replace(port=9000).provider_base_url == ENDPOINT + "/openai/v1"


def test_each_provider_reads_only_its_own_vendor_key_variable(tmp_path: Path) -> None:
    """A shell's OPENAI_API_KEY is never sent to Azure, nor AZURE_OPENAI_API_KEY to OpenAI."""
    both = {"OPENAI_API_KEY": OPENAI_KEY, "AZURE_OPENAI_API_KEY": AZURE_KEY}
    azure = _azure(tmp_path, BROKER_PROVIDER_BASE_URL=ENDPOINT, **both)
    assert azure.provider_api_key == Secret(AZURE_KEY)
    openai = Settings.from_env(_env(tmp_path, **both))
    assert openai.provider_api_key == Secret(OPENAI_KEY)
    # Only the other vendor's key set: none at all (the built-in emulator, in that flavour).
    assert _azure(tmp_path, OPENAI_API_KEY=OPENAI_KEY).uses_builtin_provider
    assert Settings.from_env(_env(tmp_path, AZURE_OPENAI_API_KEY=AZURE_KEY)).uses_builtin_provider
    # BROKER_PROVIDER_API_KEY is either provider's, and wins.
    named = _azure(
        tmp_path, BROKER_PROVIDER_API_KEY="broker-named-key-0123", BROKER_PROVIDER_BASE_URL=ENDPOINT
    )
    assert named.provider_api_key == Secret("broker-named-key-0123")


def test_a_dotenv_file_follows_the_same_rule(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"BROKER_PROVIDER=azure\nOPENAI_API_KEY={OPENAI_KEY}\n")
    assert Settings.from_env(_env(tmp_path), dotenv).uses_builtin_provider


def test_a_token_command_is_the_credential_split_without_a_shell(tmp_path: Path) -> None:
    settings = _azure(
        tmp_path, BROKER_AZURE_TOKEN_COMMAND=COMMAND, BROKER_PROVIDER_BASE_URL=ENDPOINT
    )
    assert settings.azure_token_argv == tuple(COMMAND.split())
    assert settings.provider_api_key is None and not settings.uses_builtin_provider
    assert COMMAND not in repr(settings)
    quoted = _azure(
        tmp_path,
        BROKER_AZURE_TOKEN_COMMAND="'/opt/my tools/token' --tenant \"a b\"",
        BROKER_PROVIDER_BASE_URL=ENDPOINT,
    )
    assert quoted.azure_token_argv == ("/opt/my tools/token", "--tenant", "a b")


def test_azure_without_a_credential_runs_the_built_in_emulator_and_the_filter_can_go_off(
    tmp_path: Path,
) -> None:
    settings = _azure(tmp_path)
    assert settings.uses_builtin_provider and settings.provider_base_url is None
    assert settings.webrtc_filter
    assert not _azure(tmp_path, BROKER_AZURE_WEBRTC_FILTER="off").webrtc_filter
    assert not Settings.from_env(_env(tmp_path)).webrtc_filter, "OpenAI has no such filter"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"BROKER_AZURE_TOKEN_COMMAND": COMMAND},
            "BROKER_AZURE_TOKEN_COMMAND is set but BROKER_PROVIDER is not azure",
        ),
        (
            {"BROKER_AZURE_WEBRTC_FILTER": "on"},
            "BROKER_AZURE_WEBRTC_FILTER is set but BROKER_PROVIDER is not azure",
        ),
        (
            {"BROKER_PROVIDER": "azure", "AZURE_OPENAI_API_KEY": AZURE_KEY},
            "BROKER_PROVIDER_BASE_URL is required with BROKER_PROVIDER=azure",
        ),
        (
            {"BROKER_PROVIDER": "azure", "BROKER_PROVIDER_BASE_URL": ENDPOINT},
            "BROKER_PROVIDER_BASE_URL is set but neither BROKER_PROVIDER_API_KEY /"
            " AZURE_OPENAI_API_KEY nor BROKER_AZURE_TOKEN_COMMAND is",
        ),
        (
            {
                "BROKER_PROVIDER": "azure",
                "AZURE_OPENAI_API_KEY": AZURE_KEY,
                "BROKER_AZURE_TOKEN_COMMAND": COMMAND,
                "BROKER_PROVIDER_BASE_URL": ENDPOINT,
            },
            "choose one Azure credential",
        ),
        (
            {
                "BROKER_PROVIDER": "azure",
                "AZURE_OPENAI_API_KEY": AZURE_KEY,
                "BROKER_PROVIDER_BASE_URL": ENDPOINT + "/v1",
            },
            "BROKER_PROVIDER_BASE_URL must be the resource endpoint",
        ),
        (
            {
                "BROKER_PROVIDER": "azure",
                "AZURE_OPENAI_API_KEY": AZURE_KEY,
                "BROKER_PROVIDER_BASE_URL": f"https://user:{AZURE_KEY}@x.openai.azure.com",
            },
            "BROKER_PROVIDER_BASE_URL must be the resource endpoint",
        ),
        (
            {
                "BROKER_PROVIDER": "azure",
                "BROKER_AZURE_TOKEN_COMMAND": f"get-token '{AZURE_KEY}",
                "BROKER_PROVIDER_BASE_URL": ENDPOINT,
            },
            "BROKER_AZURE_TOKEN_COMMAND is not a valid command line",
        ),
        ({"BROKER_PROVIDER": "azure", "BROKER_AZURE_TOKEN_COMMAND": "  "}, "names no program"),
        ({"BROKER_PROVIDER": "Azure"}, "BROKER_PROVIDER must be openai or azure"),
    ],
)
def test_bad_combinations_are_refused_at_start_naming_variables_only(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(_env(tmp_path, **extra))
    said = "\n".join([str(raised.value), *traceback.format_exception(raised.value)])
    assert message in str(raised.value)
    assert AZURE_KEY not in said and COMMAND not in said


def test_directly_built_settings_follow_the_same_rules(tmp_path: Path) -> None:
    """Tests and the CLI build Settings directly: the same checks apply."""
    key_file = tmp_path / "key"
    built = Settings(
        signing_key_file=key_file,
        provider="azure",
        provider_api_key=Secret(AZURE_KEY),
        provider_base_url="http://127.0.0.1:9",
        azure_webrtc_filter=False,
    )
    assert built.provider_base_url == "http://127.0.0.1:9/openai/v1"
    assert not built.webrtc_filter
    with pytest.raises(SettingsError, match="choose one Azure credential"):
        built.replace(azure_token_command="get-token")
    with pytest.raises(SettingsError, match="BROKER_AZURE_WEBRTC_FILTER is set"):
        built.replace(provider="openai", provider_base_url=None)
