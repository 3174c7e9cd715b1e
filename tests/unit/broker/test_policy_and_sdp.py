"""Tool policy decisions and SDP offer checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from broker.errors import BadRequestError
from broker.sdp import check_offer
from broker.settings import DEFAULT_TOOLS_CONFIG
from broker.tools.policy import decide
from broker.tools.registry import ToolConfigError, load_registry


@pytest.fixture
async def registry():
    async with httpx.AsyncClient() as http:
        yield load_registry(DEFAULT_TOOLS_CONFIG, http)


@pytest.mark.parametrize(
    ("allowed", "name", "arguments", "code"),
    [
        (["lookup_order"], "get_time", "{}", "tool_not_allowed"),
        (["nope"], "nope", "{}", "tool_unknown"),
        (["lookup_order"], "lookup_order", "{bad", "arguments_not_json"),
        (["lookup_order"], "lookup_order", "[1]", "arguments_not_object"),
        (["lookup_order"], "lookup_order", "{}", "arguments_invalid"),
        (["lookup_order"], "lookup_order", '{"order_id": 42}', "arguments_invalid"),
        (["lookup_order"], "lookup_order", '{"order_id": "1", "x": 1}', "arguments_invalid"),
        (
            ["lookup_order"],
            "lookup_order",
            '{"order_id": "' + "x" * 40000 + '"}',
            "arguments_too_large",
        ),
    ],
)
def test_denials(registry, allowed, name, arguments, code) -> None:
    decision = decide(registry, allowed, name, arguments)
    assert not decision.allowed and decision.code == code


def test_allowed_call_has_parsed_arguments(registry) -> None:
    decision = decide(registry, ["lookup_order"], "lookup_order", '{"order_id": "42"}')
    assert decision.allowed and decision.arguments == {"order_id": "42"}
    assert decide(registry, ["get_time"], "get_time", "").allowed


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[tools.x]\npython = "broker.tools.demo:nope"', "cannot import"),
        ('[tools.x]\npython = "broker.tools.demo:lookup_order"\nhttp = "http://a"', "exactly one"),
        ('[tools.x]\nhttp = "ftp://a"', "http(s) URL"),
        ('[tools."bad name"]\nhttp = "http://a"', "names are"),
        ('[tools.x]\nhttp = "http://a"\ntimeout = 0', "timeout"),
        ('[tools.x]\nhttp = "http://a"\nparameters = {type = "string"}', "type 'object'"),
        (
            '[tools.x]\nhttp = "http://a"\nparameters = {type = "object", required = 3}',
            "invalid parameters schema",
        ),
        ("[tools.x", "cannot read"),
    ],
)
async def test_bad_tool_configs_are_refused_at_load(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "tools.toml"
    path.write_text(toml)
    async with httpx.AsyncClient() as http:
        with pytest.raises(ToolConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_registry(path, http)


OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=setup:actpass",
        "a=fingerprint:sha-256 AA:BB",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "",
    ]
)


def test_a_minimal_offer_passes() -> None:
    check_offer(OFFER)
    check_offer(OFFER.replace("\r\n", "\n"))


@pytest.mark.parametrize(
    "sdp",
    [
        "",
        "v=1\r\n",
        OFFER.replace("m=audio", "m=video"),
        OFFER.replace("webrtc-datachannel", "something"),
        OFFER.replace("actpass", "passive"),
        OFFER.replace("a=fingerprint:sha-256 AA:BB\r\n", ""),
    ],
)
def test_not_offers(sdp: str) -> None:
    with pytest.raises(BadRequestError) as err:
        check_offer(sdp)
    assert err.value.code == "invalid_sdp"
