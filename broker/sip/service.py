"""The app's phone-call context: the lines file checked at start, the calls' tasks at stop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from broker import app_state
from broker.call.keypad import DtmfRecord, KeypadTurn
from broker.settings import Settings
from broker.sip.calls import SipCalls
from broker.sip.lines import Lines, LinesConfigError, load_lines
from broker.tools.registry import ToolRegistry
from sideband import Provider

logger = logging.getLogger(__name__)


def check_sip(settings: Settings, provider: Provider, registry: ToolRegistry) -> Lines | None:
    """The lines, if phone calls are on; every problem is reported before the broker serves.

    Raises:
        LinesConfigError: the lines file's problems, all of them; or the provider answers
            no phone calls (``capabilities.sip_calls``).
    """
    if not settings.sip_enabled:
        if settings.sip_webhook_secret is not None or settings.sip_lines is not None:
            logger.warning(
                "phone calls are off: BROKER_SIP_WEBHOOK_SECRET and BROKER_SIP_LINES go together"
            )
        return None
    if not provider.capabilities.sip_calls:
        raise LinesConfigError(
            f"phone calls are configured (BROKER_SIP_LINES) but provider {provider.name}"
            " answers no phone calls (it lacks the sip_calls capability): unset"
            " BROKER_SIP_WEBHOOK_SECRET and BROKER_SIP_LINES, or use a provider with SIP"
        )
    assert settings.sip_lines is not None
    return load_lines(
        settings.sip_lines,
        tools=list(registry),
        ceilings={
            "max_duration_s": settings.call_max_duration_s,
            "idle_timeout_s": settings.call_idle_timeout_s,
            "max_tool_calls": settings.session_max_tool_calls,
            "max_concurrent_tools": settings.session_max_concurrent_tools,
            "max_argument_bytes": settings.tool_max_argument_bytes,
        },
    )


async def sip_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    lines = check_sip(settings, app[app_state.PROVIDER], app[app_state.TOOLS])
    if lines is None:
        yield
        return
    calls = SipCalls(
        settings,
        app[app_state.SESSIONMAKER],
        app[app_state.PROVIDER],
        app[app_state.TOOLS],
        app[app_state.SUPERVISOR],
        app[app_state.SESSIONS],
        app[app_state.METRICS],
        app[app_state.OWNERSHIP],
        app[app_state.REDACTOR],
        lines,
    )
    app[app_state.SIP] = calls

    def keypad_turn(name: str) -> KeypadTurn | None:
        line = lines.lines.get(name)
        return line.dtmf_turn if line is not None else None

    def dtmf_record(name: str) -> DtmfRecord:
        line = lines.lines.get(name)
        return line.dtmf_record if line is not None else DtmfRecord.DIGITS

    app[app_state.SUPERVISOR].keypad_turn = keypad_turn
    app[app_state.SUPERVISOR].dtmf_record = dtmf_record
    logger.info("phone lines loaded: %s", ", ".join(sorted(lines.lines)) or "(none)")
    try:
        yield
    finally:
        await calls.close()
