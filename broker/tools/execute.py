"""Running a granted call's tool: one deadline, and the breaker told how it went."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.db.models import ToolCallStatus
from broker.tools.breaker import Permit, verdict_of
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import ToolContext, ToolExecutionError
from broker.tools.policy import error_output
from broker.tools.registry import ToolSpec

logger = logging.getLogger(__name__)


async def execute_granted(
    session_id: str,
    call_id: str,
    tool: str,
    spec: ToolSpec,
    args: dict[str, Any],
    permit: Permit,
    *,
    dtmf: str | None = None,
) -> tuple[ToolCallStatus, str, str | None]:
    """Run a granted call's tool; ``(status, output, error)``.

    ``dtmf``: the phone caller's keys so far, for a tool that declares ``dtmf = true``
    (``None``: the tool gets none).

    A tool's failure is an outcome with an error output for the model, never an exception;
    only a cancellation (or a crash) propagates.
    """
    log_extra = f"session_id={session_id} call_id={call_id} tool={tool}"
    started = time.perf_counter()
    http_status: int | None = None
    try:
        # One deadline for every executor kind (httpx only backs it up).
        async with asyncio.timeout(spec.timeout):
            output = await spec.executor(args, ToolContext(session_id, call_id, tool, dtmf))
    except TimeoutError:
        failure: tuple[ToolErrorCode, str] = (
            ToolErrorCode.TOOL_TIMEOUT,
            f"the tool did not finish in {spec.timeout:g}s",
        )
    except ToolExecutionError as exc:
        failure = (exc.code, exc.message)
        http_status = exc.http_status
    except Exception as exc:
        # A bug in a tool must cost one call, not the session: the model is told it failed.
        if spec.redact:
            # Its message or traceback may quote a redacted value: its type only.
            logger.error("tool raised %s exception=%s", log_extra, type(exc).__name__)
        else:
            logger.exception("tool raised %s", log_extra)
        failure = (ToolErrorCode.TOOL_ERROR, f"the tool failed ({type(exc).__name__})")
    except BaseException:
        # Cut off mid-run (the call settles outcome_unknown): no news counts as bad news.
        permit.failed()
        raise
    else:
        permit.succeeded()
        logger.info(
            "tool call succeeded %s ms=%.1f", log_extra, (time.perf_counter() - started) * 1000
        )
        return ToolCallStatus.SUCCEEDED, output, None
    healthy = verdict_of(failure[0], http_status)
    if healthy is None:
        permit.release()  # the call's own input failed it: the backend never saw it
    elif healthy:
        permit.succeeded()  # a 4xx: the call failed, but the backend works
    else:
        permit.failed()
    logger.warning("tool call failed %s code=%s", log_extra, failure[0])
    return ToolCallStatus.FAILED, error_output(*failure), failure[0]
