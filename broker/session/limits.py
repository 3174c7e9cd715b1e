"""Per-session limits: the server-side leash on a call and the budget of its tools.

Settings hold each limit's default and ceiling; the app backend that creates a session may
choose values up to the ceiling (never above: a browser gains nothing past them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from sideband import PageItems as PageItems  # re-exported: the API types its limits with it
from sideband import PageResponses as PageResponses

PROVIDER_MAX_CALL_S: Final = 3600  # the provider ends every realtime session after 60 minutes


class TamperPolicy(enum.StrEnum):
    """What the broker does when the browser changes the server-owned session config."""

    REVERT = "revert"
    """Re-apply the server-owned config and record the attempt."""
    HANGUP = "hangup"
    """Also end the call."""


@dataclass(frozen=True)
class SessionLimits:
    """The limits in force for one session (stored on its row)."""

    max_duration_s: int
    idle_timeout_s: int
    max_tool_calls: int
    max_concurrent_tools: int
    max_argument_bytes: int
    tamper_policy: TamperPolicy
    page_items: PageItems = PageItems.REFUSE
    page_responses: PageResponses = PageResponses.ALLOW


class LimitsRequest(BaseModel):
    """The optional ``limits`` object of ``POST /api/v1/sessions``; omitted fields default."""

    model_config = ConfigDict(extra="forbid")

    max_duration_s: int | None = Field(default=None, ge=1, le=PROVIDER_MAX_CALL_S)
    idle_timeout_s: int | None = Field(default=None, ge=1, le=PROVIDER_MAX_CALL_S)
    max_tool_calls: int | None = Field(default=None, ge=0, le=10_000)
    max_concurrent_tools: int | None = Field(default=None, ge=1, le=64)
    max_argument_bytes: int | None = Field(default=None, ge=2, le=1024 * 1024)
    on_tamper: TamperPolicy | None = None
    page_items: PageItems | None = None
    """``refuse`` (default): system/assistant messages the page adds are deleted and recorded;
    ``allow``: left in place. A page-made function call is always refused."""
    page_responses: PageResponses | None = None
    """``allow`` (default): responses the page starts run (their per-response overrides are a
    residual risk); ``cancel``: for voice-only sessions, cancelled and recorded."""
