"""The phone lines file: every problem reported at once; numbers from To/From headers."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import cast

import pytest

from broker import Settings, SettingsError
from broker.call.keypad import DtmfRecord, KeypadTurn
from broker.sip.lines import (
    LineAction,
    LinesConfigError,
    caller_number,
    dialled_number,
    load_lines,
    parse_lines,
)
from broker.sip.service import check_sip
from broker.tools.registry import ToolRegistry
from sideband import Provider
from sideband.provider import ProviderCapabilities

CEILINGS = {"max_duration_s": 1800, "max_tool_calls": 50}
TOOLS = ["lookup_order", "get_weather"]


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(
        """
[unknown]
reject_status = 480

[lines.support]
numbers = ["+1 (555) 123-0000", "+15551230002"]
instructions = "You are support."
tools = ["lookup_order"]
greeting = "Say hello."
turn_detection = { type = "semantic_vad", eagerness = "low" }
redact_caller = true
redact_headers = ["Contact"]
max_duration_s = 600
on_tamper = "hangup"
dtmf_turn = "#"

[lines.closed]
numbers = ["+15551230001"]
action = "reject"
reject_status = 486

[lines.moved]
numbers = ["+15551239999"]
action = "refer"
refer_to = "tel:+15551230000"
"""
    )
    lines = load_lines(path, tools=TOOLS, ceilings=CEILINGS)
    assert lines.unknown_status == 480
    support = lines.for_number("+15551230000")
    assert support is not None and support.name == "support"
    assert support.action is LineAction.ACCEPT and support.tools == ("lookup_order",)
    assert support.turn_detection == {"type": "semantic_vad", "eagerness": "low"}
    assert support.limits == {"max_duration_s": 600, "on_tamper": "hangup"}
    assert support.owner == "line:support"
    assert support.dtmf_turn == KeypadTurn("#")
    assert {"contact", "from"} <= support.hashed_headers()
    closed = lines.for_number("+1-555-123-0001")
    assert closed is not None and closed.reject_status == 486
    moved = lines.for_number("+15551239999")
    assert moved is not None and moved.refer_to == "tel:+15551230000"
    assert lines.for_number("+15550000000") is None


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(LinesConfigError) as caught:
        parse_lines(
            {
                "extra": 1,
                "unknown": {"reject_status": 200},
                "lines": {
                    "a": {"numbers": ["+1555"], "tools": ["nope"], "colour": "red"},
                    "b": {"numbers": ["+1555"], "action": "refer"},
                    "c": {"numbers": [], "max_duration_s": 99_999},
                    "d": {"numbers": ["+1556"], "max_tool_calls": 51, "turn_detection": "x"},
                    "e f": {"numbers": ["+1557"]},
                },
            },
            tools=TOOLS,
            ceilings=CEILINGS,
        )
    text = str(caught.value)
    for expected in (
        "unknown top-level key(s): extra",
        "[unknown]: reject_status",
        "[lines.a]: unknown key(s): colour",
        "[lines.a]: tool(s) not in the tools file: nope",
        "[lines.b]: a refer line needs refer_to",
        "[lines.c]: numbers must be",
        "[lines.c]: max_duration_s",
        "[lines.d]: max_tool_calls above this broker's ceiling (50)",
        "[lines.d]: turn_detection must be",
        "[lines.e f]: names are",
    ):
        assert expected in text, expected


def test_a_number_on_two_lines_is_refused() -> None:
    with pytest.raises(LinesConfigError, match="on two lines"):
        parse_lines(
            {"lines": {"a": {"numbers": ["+1555"]}, "b": {"numbers": ["+1 555"]}}},
            tools=TOOLS,
            ceilings=CEILINGS,
        )


def test_numbers_come_from_the_uri_user_parts() -> None:
    headers = [
        {"name": "From", "value": '"Bob" <sip:+15559870000@trunk.example;user=phone>;tag=1'},
        {"name": "to", "value": "<tel:+1-555-123-0000>"},
    ]
    assert dialled_number(headers) == "+15551230000"
    assert caller_number(headers) == "+15559870000"
    assert dialled_number([{"name": "To", "value": "nonsense"}]) is None
    assert dialled_number([]) is None


SIP_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def _settings(tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env({"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra})


def test_the_sip_settings_go_together_and_the_secret_is_whsec(tmp_path: Path) -> None:
    assert not _settings(tmp_path).sip_enabled
    assert _settings(tmp_path).sip_accept_timeout_s == 8.0
    assert not _settings(tmp_path, BROKER_SIP_WEBHOOK_SECRET=SIP_SECRET).sip_enabled
    both = _settings(
        tmp_path, BROKER_SIP_WEBHOOK_SECRET=SIP_SECRET, BROKER_SIP_LINES=str(tmp_path / "l")
    )
    assert both.sip_enabled and SIP_SECRET not in repr(both)
    with pytest.raises(SettingsError, match="BROKER_SIP_WEBHOOK_SECRET") as raised:
        _settings(tmp_path, BROKER_SIP_WEBHOOK_SECRET="plain-secret-that-is-long-enough-0123")
    assert "plain-secret" not in str(raised.value)


class _Provider:
    name = "azure"
    capabilities = ProviderCapabilities(sip_calls=False)


async def test_a_provider_without_sip_refuses_to_start_and_bad_lines_are_reported(
    tmp_path: Path,
) -> None:
    lines = tmp_path / "lines.toml"
    lines.write_text('[lines.a]\nnumbers = ["+1555"]\ntools = ["nope"]\ncolour = 1\n')
    settings = _settings(
        tmp_path, BROKER_SIP_WEBHOOK_SECRET=SIP_SECRET, BROKER_SIP_LINES=str(lines)
    )
    with pytest.raises(LinesConfigError, match="lacks the sip_calls capability"):
        check_sip(settings, cast(Provider, _Provider()), cast(ToolRegistry, {}))
    openai = _Provider()
    openai.capabilities = ProviderCapabilities()
    with pytest.raises(LinesConfigError) as caught:
        check_sip(settings, cast(Provider, openai), cast(ToolRegistry, {"lookup_order": None}))
    assert "unknown key(s): colour" in str(caught.value)
    assert "not in the tools file: nope" in str(caught.value)
    assert check_sip(_settings(tmp_path), cast(Provider, openai), cast(ToolRegistry, {})) is None


@pytest.mark.parametrize("value", ['"hidden"', "true", '["masked"]'])
def test_a_bad_dtmf_record_is_refused_with_what_it_may_be(tmp_path: Path, value: str) -> None:
    path = tmp_path / "lines.toml"
    path.write_text(f'[lines.pins]\nnumbers = ["+1555"]\ndtmf_record = {value}\n')
    with pytest.raises(LinesConfigError) as caught:
        load_lines(path, tools=TOOLS, ceilings=CEILINGS)
    assert (
        "[lines.pins]: dtmf_record must be 'digits' (every key in the event log) or 'masked'"
        in str(caught.value)
    )


def test_dtmf_record_defaults_to_the_digits() -> None:
    lines = parse_lines(
        {
            "lines": {
                "plain": {"numbers": ["+1555"]},
                "pins": {"numbers": ["+1556"], "dtmf_record": "masked"},
                "said": {"numbers": ["+1557"], "dtmf_record": "digits"},
            }
        },
        tools=TOOLS,
        ceilings=CEILINGS,
    )
    records = {name: line.dtmf_record for name, line in lines.lines.items()}
    assert records == {
        "plain": DtmfRecord.DIGITS,
        "pins": DtmfRecord.MASKED,
        "said": DtmfRecord.DIGITS,
    }
