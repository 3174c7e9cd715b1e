"""The one call id rule (:mod:`broker.tools.call_ids`), the stand-in an invalid id is recorded
under, and the HTTP executor refusing a value no header can carry without sending anything."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from pydantic import Field, TypeAdapter, ValidationError

from broker.settings import Secret
from broker.tools.breaker import verdict_of
from broker.tools.call_ids import (
    CALL_ID_PATTERN,
    MAX_CALL_ID,
    is_valid_call_id,
    printable,
    recorded_call_id,
)
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import HttpExecutor, ToolContext, ToolExecutionError

VALID = ["call_abc123", "c", "a.b-c_D9", "x" * MAX_CALL_ID]
INVALID = [
    "",
    "x" * (MAX_CALL_ID + 1),
    "a\r\nX-Evil: 1",
    "call_1\n",  # Python's `$` would let a final newline through: fullmatch does not
    "caf\u00e9",
    "call 1",
    "call:1",
    "call\x00",
    "\u0663",  # an Arabic-Indic digit: `\w` and `isdigit()` would take it
]
_PYDANTIC = TypeAdapter(Annotated[str, Field(pattern=CALL_ID_PATTERN)])


@pytest.mark.parametrize("call_id", VALID)
def test_valid_ids(call_id: str) -> None:
    assert is_valid_call_id(call_id)
    assert recorded_call_id(call_id) == call_id
    assert _PYDANTIC.validate_python(call_id) == call_id


@pytest.mark.parametrize("call_id", INVALID)
def test_invalid_ids_and_the_pattern_agree(call_id: str) -> None:
    """The pattern (for pydantic models, e.g. the bridge's body) and the function are one
    rule: each refuses what the other refuses."""
    assert not is_valid_call_id(call_id)
    with pytest.raises(ValidationError):
        _PYDANTIC.validate_python(call_id)


def test_non_strings_are_invalid() -> None:
    assert not is_valid_call_id(None)
    assert not is_valid_call_id(123)


@pytest.mark.parametrize("call_id", INVALID)
def test_the_stand_in_is_safe_stable_and_never_a_real_id(call_id: str) -> None:
    stand_in = recorded_call_id(call_id)
    assert stand_in == recorded_call_id(call_id)
    assert stand_in.startswith("invalid:") and not is_valid_call_id(stand_in)
    assert stand_in.isascii() and stand_in.isprintable()
    assert 0 < len(stand_in) <= MAX_CALL_ID


def test_stand_ins_of_different_ids_differ_even_when_their_start_is_the_same() -> None:
    long_a = "\u00e9" * 200 + "a"
    long_b = "\u00e9" * 200 + "b"
    assert recorded_call_id(long_a) != recorded_call_id(long_b)


def test_printable_escapes_what_could_forge_a_log_line() -> None:
    assert printable("a\r\nX-Evil: 1") == "a\\r\\nX-Evil: 1"
    assert printable("caf\u00e9") == "caf\\xe9"
    assert printable("x" * 60, limit=5) == "xxxxx..."


@pytest.mark.parametrize(
    "context",
    [
        ToolContext("sess_1", "a\r\nX-Evil: 1", "x"),
        ToolContext("sess_1", "caf\u00e9", "x"),
        ToolContext("sess_\u00e9", "call_1", "x"),
    ],
)
async def test_the_http_executor_refuses_a_value_no_header_can_carry_and_sends_nothing(
    context: ToolContext,
) -> None:
    """The dispatcher never lets such a call id through; the executor still refuses on its
    own, before any request, with a code the breaker takes no verdict from."""
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as http:
        executor = HttpExecutor("http://tools.test/x", http, Secret("s" * 32), 5.0)
        with pytest.raises(ToolExecutionError) as refused:
            await executor({}, context)
    assert refused.value.code is ToolErrorCode.TOOL_REQUEST_INVALID
    assert "\r" not in refused.value.message and "\u00e9" not in refused.value.message
    assert sent == []
    assert verdict_of(refused.value.code) is None
