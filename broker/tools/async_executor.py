"""Long-running HTTP tools (``http_async``): answered now, at a status URL, or by callback.

The call starts like an ``http`` tool's (:class:`~broker.tools.executors.HttpExecutor`: the
same signed POST, ``X-Session-ID``, ``Idempotency-Key``, output checks) with one more header,
``X-Callback-URL: {BROKER_PUBLIC_URL}/api/v1/tool-callbacks/{id}``. The backend then either

* answers ``200`` with the output: done at once, as an ``http`` tool;
* answers ``202`` with a ``Location`` header (or a JSON body ``{"status_url": …}``): the broker
  GETs that URL (signed as the POST, over an empty body) every ``poll_interval`` seconds;
  ``202`` means still working, ``200`` carries the output, anything else fails the call as an
  ``http`` tool's answer would (``tool_http_error`` with the status, which the circuit breaker
  reads). The status URL must be on the tool's own origin: the broker polls nothing else;
* answers ``202`` and later POSTs the output to the callback URL (``tool_callbacks`` row,
  :meth:`CallbackStore.receive`): the waiting executor reads the row every ``poll_interval``, so the
  callback may land on any broker instance.

All of it within the tool's ``timeout`` (one deadline for the whole call, kept by
:func:`broker.tools.execute.execute_granted`); past it the model gets ``tool_timeout``.

**Why the callback is signed as well as unguessable.** The id (256 random bits) is a
capability on its own, but a URL ends up in proxies' and backends' logs; so a signed tool's
callback must also carry the Standard Webhooks signature made with the tool's own secret, with
``Webhook-Id`` set to the callback id (a signed body cannot be moved to another callback).
An ``unsigned = true`` tool, which has no secret, relies on the id alone. A callback is taken
once (a second is ``409``) and only until the call's deadline (then ``404``, as an unknown id).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db.models import ToolCallback, utcnow
from broker.db.times import as_utc
from broker.settings import Secret
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import (
    MAX_OUTPUT_BYTES,
    HttpExecutor,
    ToolContext,
    ToolExecutionError,
    _checked_text,
    _read_output,
)
from broker.webhooks.signature import sign

logger = logging.getLogger(__name__)

CALLBACK_HEADER: Final = "X-Callback-URL"
CALLBACK_PATH: Final = "/api/v1/tool-callbacks/"
DEFAULT_POLL_INTERVAL: Final = 0.5
MIN_POLL_INTERVAL: Final = 0.05
MAX_POLL_INTERVAL: Final = 30.0
MAX_ACCEPTED_BYTES: Final = 4096
"""The most of a ``202`` body read (it only names the status URL)."""
SIGNATURE_TOLERANCE_S: Final = 300
RESULT_RECEIVED: Final = "succeeded"


class CallbackError(Exception):
    """A callback the broker refuses.

    ``reason`` is ``unknown``, ``unsigned``, ``replayed`` or ``invalid`` (the route maps each
    to its status).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CallbackStore:
    """The ``tool_callbacks`` rows: opened by the executor, filled by the route, polled back.

    Args:
        sessionmaker: the broker's database.
        public_url: ``BROKER_PUBLIC_URL``; ``None``: the broker has no address a backend can
            call back, so no ``X-Callback-URL`` is sent (status-URL polling still works).
    """

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], public_url: str | None
    ) -> None:
        self._sessionmaker = sessionmaker
        self.public_url = public_url.rstrip("/") if public_url else None

    def url(self, callback_id: str) -> str:
        assert self.public_url is not None
        return f"{self.public_url}{CALLBACK_PATH}{callback_id}"

    async def open(self, context: ToolContext, deadline_s: float) -> str:
        """A new callback for this call, valid until the call's deadline; its id."""
        callback_id = secrets.token_urlsafe(32)
        async with self._sessionmaker.begin() as s:
            s.add(
                ToolCallback(
                    id=callback_id,
                    session_id=context.session_id,
                    call_id=context.call_id,
                    tool=context.tool,
                    expires_at=utcnow() + timedelta(seconds=deadline_s),
                )
            )
        return callback_id

    async def take(self, callback_id: str) -> str | None:
        """The output the backend posted, or ``None`` while none came; taken once.

        The row keeps that a result came (``received_at``: a repeat is ``replayed``) but not
        the result: it is the tool's raw output, whose redacted fields only the tool call's
        own record keeps sealed, so it must not sit in this table for the session's life.
        Nothing reads it twice: one executor waits for each callback, and a restarted broker
        does not resume the wait (the call is settled ``outcome_unknown`` instead).
        """
        async with self._sessionmaker.begin() as s:
            output = await s.scalar(
                select(ToolCallback.result).where(
                    ToolCallback.id == callback_id, ToolCallback.received_at.is_not(None)
                )
            )
            if output is not None:
                await s.execute(
                    update(ToolCallback).where(ToolCallback.id == callback_id).values(result=None)
                )
        return output

    async def tool_of(self, callback_id: str) -> str:
        """The tool of a live (unexpired) callback.

        Raises:
            CallbackError: ``unknown``: no such callback, or its call's deadline passed.
        """
        async with self._sessionmaker() as s:
            row = await s.get(ToolCallback, callback_id)
        if row is None or as_utc(row.expires_at) <= utcnow():
            raise CallbackError("unknown", "no such tool callback, or it expired")
        return row.tool

    async def receive(self, callback_id: str, output: str) -> None:
        """Store the backend's output, once.

        Raises:
            CallbackError: ``replayed`` (one came already) or ``unknown`` (expired meanwhile).
        """
        now = utcnow()
        async with self._sessionmaker.begin() as s:
            # One statement: of two concurrent posts (two instances), exactly one wins.
            taken = await s.scalar(
                update(ToolCallback)
                .where(
                    ToolCallback.id == callback_id,
                    ToolCallback.received_at.is_(None),
                    ToolCallback.expires_at > now,
                )
                .values(received_at=now, result=output, result_status=RESULT_RECEIVED)
                .returning(ToolCallback.id)
            )
            if taken is not None:
                return
            row = await s.get(ToolCallback, callback_id)
        if row is not None and row.received_at is not None:
            raise CallbackError("replayed", "this tool callback was already received")
        raise CallbackError("unknown", "no such tool callback, or it expired")


def verify_callback(
    secret: Secret, callback_id: str, headers: Mapping[str, str], body: bytes
) -> None:
    """Check a callback's Standard Webhooks signature (``Webhook-Id`` = the callback id).

    Raises:
        CallbackError: ``unsigned``; the message names the check, never the expected value.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not msg_id or not stamp or not signatures:
        raise CallbackError("unsigned", "the callback carries no signature")
    if not hmac.compare_digest(msg_id.encode(), callback_id.encode()):
        raise CallbackError("unsigned", "the callback's Webhook-Id is not its callback id")
    if not (stamp.isascii() and stamp.isdigit()):
        raise CallbackError("unsigned", "malformed Webhook-Timestamp")
    if abs(time.time() - int(stamp)) > SIGNATURE_TOLERANCE_S:
        raise CallbackError("unsigned", "the callback's timestamp is outside the tolerance")
    expected = sign(secret.reveal(), msg_id, int(stamp), body).encode()
    if not any(hmac.compare_digest(c.encode(), expected) for c in signatures.split()):
        raise CallbackError("unsigned", "no matching callback signature")


def checked_output(body: bytes, content_type: str, charset: str | None) -> str:
    """A callback body as the output, under the rules of a ``200`` answer.

    Raises:
        CallbackError: ``invalid``: empty, not text, or JSON announced and not delivered.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    try:
        return _checked_text(body, media_type, charset)
    except ToolExecutionError as exc:
        raise CallbackError("invalid", exc.message) from None


@dataclass(frozen=True)
class _Pending:
    status_url: str | None


class HttpAsyncExecutor(HttpExecutor):
    """An :class:`HttpExecutor` whose backend may answer later (see the module docstring).

    Args:
        poll_interval: seconds between polls of the status URL and of the callback row.
        callbacks: where callbacks are kept; ``None`` (or one with no public URL): none offered.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        secret: Secret | None,
        timeout: float,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        callbacks: CallbackStore | None = None,
    ) -> None:
        super().__init__(url, http, secret, timeout)
        self.poll_interval = poll_interval
        self.callbacks = callbacks
        self._deadline_s = timeout
        self._origin = _origin(url)

    def __repr__(self) -> str:
        return f"HttpAsyncExecutor({self.url!r}, signed={self.signed})"

    @property
    def secret(self) -> Secret | None:
        """The tool's secret (its callbacks are verified with it)."""
        return self._secret

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        body = json.dumps(arguments, separators=(",", ":")).encode("ascii")
        callback_id: str | None = None
        extra: dict[str, str] = {}
        if self.callbacks is not None and self.callbacks.public_url is not None:
            callback_id = await self.callbacks.open(context, self._deadline_s)
            extra[CALLBACK_HEADER] = self.callbacks.url(callback_id)
        answer = await self._exchange(
            "POST", self.url, body, self._headers(body, context, extra), self._answer
        )
        if isinstance(answer, str):
            return answer
        status_url = answer.status_url
        if status_url is None and callback_id is None:
            raise ToolExecutionError(
                ToolErrorCode.TOOL_BAD_RESPONSE,
                "the tool backend answered 202 with no status URL, and no callback is possible",
            )
        # Bounded by the call's deadline (asyncio.timeout around this executor).
        while True:
            await asyncio.sleep(self.poll_interval)
            if callback_id is not None:
                assert self.callbacks is not None
                output = await self.callbacks.take(callback_id)
                if output is not None:
                    return output
            if status_url is not None:
                polled = await self._exchange(
                    "GET", status_url, b"", self._headers(b"", context), self._answer
                )
                if isinstance(polled, str):
                    return polled
                status_url = polled.status_url or status_url

    async def _answer(self, resp: httpx.Response) -> str | _Pending:
        """The output of a ``200``, or what a ``202`` says about where to look next."""
        if resp.status_code != 202:
            return await _read_output(resp)
        location = resp.headers.get("Location")
        if location is None:
            location = await _status_url_in_body(resp)
        if location is None:
            return _Pending(None)
        absolute = urljoin(self.url, location)
        if _origin(absolute) != self._origin:
            # The signed poll (and the call's identity) would go to a host nobody configured.
            raise ToolExecutionError(
                ToolErrorCode.TOOL_BAD_RESPONSE,
                "the tool backend's status URL is on another origin, which is not polled",
            )
        return _Pending(absolute)


async def _status_url_in_body(resp: httpx.Response) -> str | None:
    received = bytearray()
    async for chunk in resp.aiter_bytes():
        received += chunk
        if len(received) > MAX_ACCEPTED_BYTES:
            return None
    try:
        value = json.loads(bytes(received)) if received.strip() else None
    except ValueError:
        return None
    url = value.get("status_url") if isinstance(value, dict) else None
    return url if isinstance(url, str) and url else None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


__all__ = [
    "CALLBACK_HEADER",
    "CALLBACK_PATH",
    "MAX_OUTPUT_BYTES",
    "CallbackError",
    "CallbackStore",
    "HttpAsyncExecutor",
    "checked_output",
    "verify_callback",
]
