"""How a tool runs: an in-process async function, or a signed HTTP POST to a tool backend.

Every executor gets the arguments object and a :class:`ToolContext`; it returns the output string
the model will read, or raises :class:`ToolExecutionError` with a message safe to show the model.
Timeouts are the dispatcher's job (one ``asyncio.timeout`` per call, whatever the executor).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import httpx

from broker import tracing
from broker.settings import Secret
from broker.tools.codes import ToolErrorCode
from broker.tools.signing import signature_headers

MAX_OUTPUT_BYTES: Final = 64 * 1024
"""The most a tool may return (a Python tool's encoded result, an HTTP tool's body)."""
_HTTPX_GRACE_S: Final = 1.0
_HEADER_VALUE: Final = re.compile(r"[\x20-\x7e]*")
"""What a header value we send may hold: printable ASCII (no CR/LF, no obs-text)."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class ToolContext:
    """Who is asking: handed to every executor (HTTP tools get it as headers)."""

    session_id: str
    call_id: str
    tool: str
    dtmf: str | None = None
    """The phone caller's keys so far (``0``-``9``, ``*``, ``#``, ``A``-``D``, oldest first)
    for a tool that declares ``dtmf = true``; ``None`` for any other tool."""


class ToolExecutionError(Exception):
    """The tool failed; ``code`` is stable, the message is safe to give the model.

    Attributes:
        http_status: the tool backend's status when it answered one that is not a success
            (the circuit breaker tells a 5xx from a 4xx by it); ``None`` otherwise.
    """

    def __init__(
        self, code: ToolErrorCode, message: str, *, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class Executor(Protocol):
    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str: ...


PythonTool = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


def encode_output(result: Any) -> str:
    """A tool's result as the output string: strings pass through, anything else is JSON once."""
    text = result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
    if len(text.encode("utf-8", "surrogatepass")) > MAX_OUTPUT_BYTES:
        raise ToolExecutionError(
            ToolErrorCode.OUTPUT_TOO_LARGE, f"tool output exceeds {MAX_OUTPUT_BYTES} bytes"
        )
    return text


class PythonExecutor:
    """Calls ``async def tool(arguments, context) -> Any`` in the broker process.

    Cancellation (the per-call timeout) only lands at the tool's ``await`` points: a tool that
    blocks the event loop cannot be timed out, so in-process tools must not block.
    """

    def __init__(self, func: PythonTool) -> None:
        self._func = func

    def __repr__(self) -> str:
        return f"PythonExecutor({getattr(self._func, '__qualname__', self._func)!r})"

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        return encode_output(await self._func(arguments, context))


class HttpExecutor:
    """POSTs the arguments object as JSON to a tool backend, signed, never following redirects.

    Headers: ``X-Session-ID``, ``X-Call-ID`` and ``X-Tool-Name`` say who is asking;
    ``Idempotency-Key: <session_id>:<call_id>`` names the call for a backend that dedupes;
    ``X-DTMF-Digits``: the phone caller's keys so far, for a tool that declares ``dtmf``;
    the Standard Webhooks headers (``Webhook-Id``, the same key, signed; ``Webhook-Timestamp``;
    ``Webhook-Signature``) and the deprecated ``X-Broker-Timestamp`` and
    ``X-Broker-Signature`` prove the broker sent it (unless the tool is configured
    ``unsigned``; :mod:`broker.tools.signing`). A 2xx body of at most
    :data:`MAX_OUTPUT_BYTES` is the output, verbatim, if it is non-blank text in its charset
    (and JSON when its ``Content-Type`` says JSON); anything else is a failure the model is
    told about.

    Args:
        secret: the per-tool HMAC key; ``None`` only for a tool configured ``unsigned = true``.
        timeout: the tool's timeout; httpx gets it (plus a second) for each request.
    """

    def __init__(
        self, url: str, http: httpx.AsyncClient, secret: Secret | None, timeout: float
    ) -> None:
        self.url = url
        self._http = http
        self._secret = secret
        # The dispatcher's deadline is the one that counts (same for every executor, same
        # message); httpx gets a little more so it only replaces the client's default (which
        # may be shorter than a long tool's timeout) and never races the deadline.
        self._timeout = httpx.Timeout(timeout + _HTTPX_GRACE_S)

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def __repr__(self) -> str:
        # Never the secret; only whether there is one.
        return f"HttpExecutor({self.url!r}, signed={self.signed})"

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        # Serialized here (not by httpx) so the signature covers exactly the bytes sent, and
        # re-serialized from the validated object so the backend reads what policy checked.
        body = json.dumps(arguments, separators=(",", ":")).encode("ascii")
        return await self._exchange(
            "POST", self.url, body, self._headers(body, context), _read_output
        )

    def _headers(
        self, body: bytes, context: ToolContext, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The request's headers: who is asking, the call's key, the signature over ``body``."""
        idempotency_key = f"{context.session_id}:{context.call_id}"
        headers = {
            "Content-Type": "application/json",
            # Counting compressed bytes would let a small body inflate past the cap.
            "Accept-Encoding": "identity",
            "X-Session-ID": context.session_id,
            "X-Call-ID": context.call_id,
            "X-Tool-Name": context.tool,
            # The call's identity, under the name backends' dedupe middleware looks for; it
            # is signed as the Webhook-Id (see docs/tool-webhooks.md).
            "Idempotency-Key": idempotency_key,
            **(extra or {}),
        }
        if context.dtmf is not None:
            headers["X-DTMF-Digits"] = context.dtmf
        if self._secret is not None:
            # The Webhook-Id is the call's key, not a fresh id: a re-sent call (an idempotent
            # tool after a crash) is the same message to a receiver that dedupes on it.
            headers.update(signature_headers(self._secret, body, idempotency_key))
        # The tool call's trace goes on to the backend (W3C trace context; broker/tracing.py).
        tracing.inject(headers)
        return headers

    async def _exchange(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        read: Callable[[httpx.Response], Awaitable[_T]],
    ) -> _T:
        """One request to the backend, its answer handed to ``read``; transport failures mapped."""
        request = self._request(method, url, body, headers)
        try:
            # A redirect could send the signed call (and the user's data) anywhere.
            resp = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                return await read(resp)
            finally:
                await resp.aclose()
        except httpx.LocalProtocolError as exc:
            # Our side refused to write the request (h11 checks what httpx does not): the
            # call's fault, found before the backend read a byte of it.
            raise _unsendable() from exc
        except httpx.TimeoutException as exc:
            raise ToolExecutionError(
                ToolErrorCode.TOOL_TIMEOUT, "the tool backend did not answer in time"
            ) from exc
        except httpx.HTTPError as exc:
            raise ToolExecutionError(
                ToolErrorCode.TOOL_UNREACHABLE, "the tool backend is unreachable"
            ) from exc

    def _request(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Request:
        """The request, or ``tool_request_invalid`` if the call's values cannot make one.

        Checked here, before any connection, so that a call whose own input (an id with a
        line break or a non-ASCII character) cannot go into a header fails alone and never
        reads as the backend failing (:func:`broker.tools.breaker.verdict_of`).
        """
        if not all(_HEADER_VALUE.fullmatch(value) for value in headers.values()):
            raise _unsendable()
        try:
            return self._http.build_request(
                method, url, content=body, headers=headers, timeout=self._timeout
            )
        except (UnicodeError, ValueError) as exc:
            raise _unsendable() from exc


def _unsendable() -> ToolExecutionError:
    # Never names the value: it may be what a page planted to forge a header.
    return ToolExecutionError(
        ToolErrorCode.TOOL_REQUEST_INVALID,
        "this call cannot be sent to the tool (a value it carries is not allowed in a"
        " request); nothing was sent",
    )


async def _read_output(resp: httpx.Response) -> str:
    """The body of a successful answer, read incrementally and never past the cap.

    Raises:
        ToolExecutionError: a redirect, a non-2xx status, a compressed or oversized body, or
            one that breaks the contract (:func:`_checked_text`).
    """
    if resp.is_redirect or 300 <= resp.status_code < 400:
        raise ToolExecutionError(
            ToolErrorCode.TOOL_REDIRECT_REFUSED,
            f"the tool backend answered a redirect ({resp.status_code}), which is not followed",
        )
    if not resp.is_success:
        raise ToolExecutionError(
            ToolErrorCode.TOOL_HTTP_ERROR,
            f"the tool backend answered {resp.status_code}",
            http_status=resp.status_code,
        )
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ToolExecutionError(
            ToolErrorCode.TOOL_HTTP_ERROR, "the tool backend answered with a compressed body"
        )
    too_large = ToolExecutionError(
        ToolErrorCode.TOOL_RESPONSE_TOO_LARGE,
        f"the tool backend's answer exceeds {MAX_OUTPUT_BYTES} bytes",
    )
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_OUTPUT_BYTES:
        raise too_large
    received = bytearray()
    # Counted as they arrive (no encoding was accepted above, so these are the bytes on the
    # wire): the body is abandoned the moment it passes the cap, so an endless or huge
    # answer costs at most one network chunk more than the cap.
    async for chunk in resp.aiter_bytes():
        received += chunk
        if len(received) > MAX_OUTPUT_BYTES:
            raise too_large
    media_type = resp.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return encode_output(_checked_text(bytes(received), media_type, resp.charset_encoding))


def _bad_response(message: str) -> ToolExecutionError:
    return ToolExecutionError(ToolErrorCode.TOOL_BAD_RESPONSE, message)


def _checked_text(body: bytes, media_type: str, charset: str | None) -> str:
    """The body as the output, if it keeps the webhook contract (docs/tool-webhooks.md).

    A 2xx is the backend saying "done, here is the result": an answer the model cannot read
    (empty, bytes that are not text, JSON announced and not delivered) is a broken backend,
    and passing it on would have the model improvise a result that never came.

    Raises:
        ToolExecutionError: ``tool_bad_response``; the message names the rule, never the body.
    """
    is_json = media_type == "application/json" or media_type.endswith("+json")
    try:
        # JSON is UTF-8 (RFC 8259) whatever the header claims; a BOM before it is tolerated.
        text = _decode(body, "utf-8-sig" if is_json else charset or "utf-8")
    except UnicodeDecodeError:
        raise _bad_response("the tool backend's answer is not valid text in its charset") from None
    if not text.strip():
        raise _bad_response("the tool backend answered with an empty body")
    if is_json:
        try:
            json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise _bad_response(
                "the tool backend's answer is not valid JSON, though its Content-Type says JSON"
            ) from None
    return text


def _decode(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset)
    except LookupError:  # a charset Python does not know: then it must be UTF-8
        return body.decode("utf-8")


def _reject_constant(name: str) -> object:
    # NaN and Infinity are Python's extension, not JSON: a strict reader downstream chokes.
    raise ValueError(f"{name} is not JSON")
