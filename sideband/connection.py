"""One sideband WebSocket: attach with bounded retry, a single reader, one send path, close."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp

from sideband.backoff import backoff_delays
from sideband.errors import (
    CallEndedError,
    CallNotFoundError,
    CredentialError,
    FrameTooLargeError,
    MalformedEventError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
    SidebandClosedError,
)
from sideband.events import decode_frame
from sideband.provider import SidebandTarget

logger = logging.getLogger(__name__)

HEARTBEAT: Final = 20.0
"""Seconds between pings; a peer that stops answering is detected within about twice this."""
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""The largest frame the provider may send. Kept at 16 MiB on purpose: aiohttp holds a whole
message in memory (and decoding it holds it again), per call, so a limit high enough for every
frame a page can cause (a retrieve of its audio item carries all of it as base64, 64 KiB per
second of 24 kHz PCM, and a page can commit as much as it likes) would let each call pin
hundreds of MiB. A larger frame is refused from its header alone, before its payload is read
(:class:`~sideband.errors.FrameTooLargeError`), and what the controller does then is what keeps
the call working (docs/protocol.md §9.2)."""
HANDSHAKE_TIMEOUT: Final = 10.0
FIRST_RETRY_DELAY: Final = 0.1
MAX_RETRY_DELAY: Final = 2.0


class SidebandConnection:
    """A live sideband WebSocket to one call.

    Exactly one task may iterate :meth:`frames`; any number may :meth:`send`.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        call_id: str,
        *,
        attempts: int = 1,
        attach_seconds: float = 0.0,
    ) -> None:
        self._ws = ws
        self._send_lock = asyncio.Lock()
        self.call_id = call_id
        self.attempts = attempts
        """Handshakes it took to attach (more than one: the provider made us wait)."""
        self.attach_seconds = attach_seconds
        """How long :meth:`attach` took, retries and their delays included."""

    @classmethod
    async def attach(
        cls,
        http: aiohttp.ClientSession,
        target: SidebandTarget,
        call_id: str,
        *,
        attach_timeout: float,
        not_found_for: float | None = None,
        first_delay: float = 0.0,
    ) -> SidebandConnection:
        """Open the sideband, retrying while the provider does not know the call yet.

        A 404 right after call creation is a known race (docs/protocol.md §2.5), and so are a
        refused connection and a 5xx during a provider restart: all are retried with jittered
        exponential backoff until ``attach_timeout`` seconds have passed, and so is a
        credential that could not be obtained (a token service's hiccup). Auth and other 4xx
        errors are not retried: repeating them cannot help. Each attempt asks the target for
        its headers anew (:meth:`SidebandTarget.dial_headers`), so a token that expires mid-call
        is fresh on every re-attach.

        Args:
            http: the provider's HTTP client session.
            target: the sideband URL and headers.
            call_id: the call (for log lines).
            attach_timeout: the bound on the whole attempt, in seconds.
            not_found_for: retry 404s only this long (``None``: the whole ``attach_timeout``).
                A re-attach to a call that was attached before passes a short grace: there a
                404 means the call ended, and is raised as :class:`CallEndedError`.
            first_delay: wait up to this long (jittered) before the first attempt, so the
                sidebands of many calls dropped at once do not all come back in one burst.

        Raises:
            CallNotFoundError: still 404 when the time ran out (``CallEndedError`` when
                ``not_found_for`` was given).
            ProviderError: any other handshake status.
            ProviderTimeoutError / ProviderUnreachableError: the last attempt's transport failure
                (``CredentialError``: its credential could not be obtained).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + attach_timeout
        delays = backoff_delays(FIRST_RETRY_DELAY, MAX_RETRY_DELAY, jitter=0.25)
        attempt = 0
        if first_delay > 0:
            await asyncio.sleep(random.uniform(0, first_delay))
        while True:
            attempt += 1
            try:
                # Bounded per attempt: a handshake the provider never answers must not hold
                # the whole attach (the client session's own timeout is minutes).
                async with asyncio.timeout(
                    max(0.1, min(HANDSHAKE_TIMEOUT, deadline - loop.time()))
                ):
                    # Inside the bound: a token command that hangs costs this attempt only.
                    headers = await target.dial_headers()
                    ws = await http.ws_connect(
                        target.url,
                        headers=headers,
                        heartbeat=HEARTBEAT,
                        max_msg_size=MAX_MESSAGE_BYTES,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                        autoping=True,
                    )
                logger.info("sideband attached call_id=%s attempt=%d", call_id, attempt)
                return cls(ws, call_id, attempts=attempt, attach_seconds=loop.time() - started)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 404 and not_found_for is not None:
                    if loop.time() - started >= not_found_for:
                        raise CallEndedError(404, "call_id_not_found", "sideband_attach") from exc
                    error: Exception = CallEndedError(404, "call_id_not_found", "sideband_attach")
                elif exc.status == 404:
                    error = CallNotFoundError(404, "call_id_not_found", "sideband_attach")
                elif exc.status >= 500:
                    error = ProviderError(exc.status, None, "sideband_attach")
                else:
                    raise ProviderError(exc.status, None, "sideband_attach") from exc
            except CredentialError as exc:
                error = exc
            except TimeoutError:
                error = ProviderTimeoutError("sideband_attach", HANDSHAKE_TIMEOUT)
            except aiohttp.ClientConnectionError as exc:
                error = ProviderUnreachableError("sideband_attach", type(exc).__name__)
            delay = next(delays)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise error
            delay = min(delay, remaining)
            logger.info(
                "sideband attach retry call_id=%s attempt=%d error=%s delay=%.2fs",
                call_id,
                attempt,
                type(error).__name__,
                delay,
            )
            await asyncio.sleep(delay)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Yield every decoded server event until the socket closes.

        Ends quietly on a close frame (the code is then in :attr:`close_code`). Frames that are
        not JSON events are logged and skipped: one bad frame must not cost the call.

        Raises:
            FrameTooLargeError: a frame was over :data:`MAX_MESSAGE_BYTES` (aiohttp closed
                the socket with 1009 before reading its payload).
            SidebandClosedError: the transport failed otherwise (``WSMsgType.ERROR``).
        """
        while True:
            msg = await self._ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                try:
                    event = decode_frame(msg.data)
                except MalformedEventError as exc:
                    # One bad frame costs that frame, never the call's sideband.
                    logger.warning("sideband dropped frame call_id=%s: %s", self.call_id, exc)
                    continue
                yield event
            elif msg.type is aiohttp.WSMsgType.ERROR:
                # aiohttp hands a protocol error (its WebSocketError, with the close code it
                # sent) in the message, and a transport failure in ws.exception().
                error = msg.data if isinstance(msg.data, BaseException) else self._ws.exception()
                if (
                    isinstance(error, aiohttp.WebSocketError)
                    and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                ):
                    raise FrameTooLargeError(MAX_MESSAGE_BYTES, str(error)) from error
                raise SidebandClosedError(self._ws.close_code, str(error or "transport error"))
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                return
            else:  # PING/PONG are answered by aiohttp itself (autoping).
                continue

    async def send(self, event: dict[str, Any]) -> None:
        """Send one client event.

        Raises:
            SidebandClosedError: the socket is closed. Not retried here: the caller decides,
                because a lost output must be re-sent on a new connection, not this one.
        """
        data = json.dumps(event, separators=(",", ":"))
        async with self._send_lock:
            if self._ws.closed:
                raise SidebandClosedError(self._ws.close_code, "send on a closed sideband")
            try:
                await self._ws.send_str(data)
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise SidebandClosedError(self._ws.close_code, type(exc).__name__) from exc

    async def close(self) -> None:
        """Close the socket (idempotent). The call itself goes on: only hangup ends it."""
        if not self._ws.closed:
            await self._ws.close()
