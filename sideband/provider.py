"""The provider boundary: creating calls, hanging up, and where the sideband connects.

The broker only ever sees the :class:`Provider` protocol, so OpenAI, Azure and the local
emulator are interchangeable; what differs between them that the broker must know before it
relies on a feature is in :class:`ProviderCapabilities`. :class:`OpenAICompatibleProvider`
speaks the unified interface (``POST {base}/realtime/calls`` multipart with a standard key,
docs/protocol.md §1.1); Azure's two-step offer is :class:`sideband.azure.AzureOpenAIProvider`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from yarl import URL

from sideband.errors import (
    CallNotFoundError,
    ProviderCapabilityError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

logger = logging.getLogger(__name__)

# Call ids are opaque (`rtc_…` at OpenAI, UUIDs elsewhere); this only rules out values that
# could change the meaning of a URL we build from them.
_CALL_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_MAX_ERROR_BODY: Final = 16 * 1024


@dataclass(frozen=True)
class CallAnswer:
    """The provider's answer to a new call.

    Attributes:
        call_id: last path segment of the ``Location`` header.
        sdp: the SDP answer, verbatim.
        location: the ``Location`` header as received.
    """

    call_id: str
    sdp: str
    location: str


@dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider's calls allow; the broker checks a flag before it relies on the feature.

    Attributes:
        sideband: a server-side WebSocket can attach to a call by its id (docs/protocol.md §2).
        hangup: the server can end a call (``POST …/calls/{id}/hangup``).
        page_sees_function_calls: the model's function-call events reach the page's data
            channel, so a page can relay a call through the bridge. Azure's
            ``webrtcfilter=on`` keeps them off it (docs/protocol.md §0).
        offer_needs_client_secret: the offer is two provider requests, an ephemeral client
            secret minted with the session config and then the SDP posted with it (Azure),
            instead of one.
        websocket_sessions: the provider serves a realtime session over a WebSocket of its
            own (``/v1/realtime?model=…``, no WebRTC call): trusted server sessions use it.
        out_of_band_responses: ``response.create`` takes ``conversation: "none"`` (a response
            outside the conversation): a long-running tool's acknowledgement uses it.
        sip_calls: the provider answers phone calls on a SIP trunk: it posts
            ``realtime.call.incoming`` and takes ``accept``/``reject``/``refer`` for the call.
    """

    sideband: bool = True
    hangup: bool = True
    page_sees_function_calls: bool = True
    offer_needs_client_secret: bool = False
    websocket_sessions: bool = True
    out_of_band_responses: bool = True
    sip_calls: bool = True


OPENAI_CAPABILITIES: Final = ProviderCapabilities()
"""OpenAI's unified interface (and the emulator's default flavour): every feature, one request."""

CredentialSource = Callable[[], Awaitable[Mapping[str, str]]]
"""Gives the auth headers for one request or one sideband dial, asked each time: a token that
expires (Entra) is fetched fresh. Raises :class:`~sideband.errors.CredentialError`."""


@dataclass(frozen=True)
class SidebandTarget:
    """Where and how to open a sideband WebSocket.

    ``headers`` may hold the provider key, and ``credential`` gives one per dial: never log
    either.
    """

    url: URL
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    credential: CredentialSource | None = field(default=None, repr=False)

    async def dial_headers(self) -> dict[str, str]:
        """The headers of one handshake: the fixed ones and, when set, a fresh credential's.

        Raises:
            CredentialError: the credential could not be obtained.
        """
        headers = dict(self.headers)
        if self.credential is not None:
            headers.update(await self.credential())
        return headers


class Provider(Protocol):
    """A realtime provider reachable over WebRTC with a server-side sideband."""

    @property
    def name(self) -> str: ...

    @property
    def base_url(self) -> str:
        """Where the provider is (for logs and the banner: it holds no credential)."""
        ...

    @property
    def capabilities(self) -> ProviderCapabilities: ...

    async def create_call(self, offer_sdp: str, session: Mapping[str, Any]) -> CallAnswer:
        """Create a WebRTC call from a browser's offer and the server-owned session config.

        Raises:
            ProviderError: non-2xx answer, or a 2xx without a usable ``Location``.
            ProviderTimeoutError: no answer in time.
            ProviderUnreachableError: the provider could not be reached.
        """
        ...

    async def hangup(self, call_id: str) -> None:
        """End the call at the provider.

        Raises:
            CallNotFoundError: the call is already gone.
            ProviderError, ProviderTimeoutError, ProviderUnreachableError: as for create_call.
        """
        ...

    async def accept_call(self, call_id: str, session: Mapping[str, Any]) -> None:
        """Answer a ringing phone call (SIP) with the server-owned session config.

        ``session`` must carry ``type: "realtime"``. The call id comes from the provider's
        ``realtime.call.incoming`` webhook; afterwards a sideband attaches with it as for a
        WebRTC call. The provider has been reported to take ~5 s and then answer 404
        (docs/protocol.md §0, "SIP").

        Raises:
            ProviderCapabilityError: the provider answers no phone calls
                (``capabilities.sip_calls`` is False); nothing was sent.
            CallNotFoundError: the call is unknown, or stopped ringing.
            ProviderError, ProviderTimeoutError, ProviderUnreachableError: as for create_call.
        """
        ...

    async def reject_call(self, call_id: str, status_code: int | None = None) -> None:
        """Decline a ringing phone call with the SIP ``status_code``.

        ``None`` sends no status: the provider's default, 603 Decline, applies.

        Raises:
            ProviderCapabilityError, CallNotFoundError, ProviderError, ProviderTimeoutError,
                ProviderUnreachableError: as for :meth:`accept_call`.
        """
        ...

    async def refer_call(self, call_id: str, target_uri: str) -> None:
        """Transfer a phone call to ``target_uri`` (``tel:+1…`` or ``sip:…``).

        The provider hands a SIP REFER to the trunk; the realtime session then ends.

        Raises:
            ProviderCapabilityError, CallNotFoundError, ProviderError, ProviderTimeoutError,
                ProviderUnreachableError: as for :meth:`accept_call`.
        """
        ...

    def sideband_target(self, call_id: str) -> SidebandTarget:
        """The WebSocket URL and headers that attach a sideband to ``call_id``.

        Computed once per call and dialled on every (re)attach: a credential that expires
        comes through :attr:`SidebandTarget.credential`, asked per dial.
        """
        ...

    def session_target(self, model: str) -> SidebandTarget:
        """The WebSocket URL and headers of a new realtime session of ``model`` (no WebRTC).

        ``{base}/realtime?model=…`` with the sideband's credentials: the socket is the
        session; its first server event is ``session.created``.

        Raises:
            ProviderCapabilityError: the provider has no WebSocket sessions
                (``capabilities.websocket_sessions`` is False).
        """
        ...


def call_id_from_location(location: str) -> str | None:
    """The call id in a ``Location`` header (relative or absolute), or ``None`` if it has none."""
    segment = URL(location).path.rstrip("/").rsplit("/", 1)[-1]
    return segment if _CALL_ID_RE.match(segment) else None


async def _error_code(resp: aiohttp.ClientResponse) -> str | None:
    """The provider's ``error.code``; the rest of the body is never surfaced."""
    try:
        body = await resp.content.read(_MAX_ERROR_BODY)
        data = json.loads(body)
    except (ValueError, aiohttp.ClientError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and len(code) <= 100 else None


@contextmanager
def _provider_errors(operation: str, timeout: float) -> Iterator[None]:
    """Translate transport failures into sideband errors, keeping the cause chained."""
    try:
        yield
    except TimeoutError as exc:
        raise ProviderTimeoutError(operation, timeout) from exc
    except aiohttp.ClientConnectionError as exc:
        raise ProviderUnreachableError(operation, type(exc).__name__) from exc
    except aiohttp.ClientPayloadError as exc:
        raise ProviderUnreachableError(operation, "payload error") from exc


async def _post_offer(
    http: aiohttp.ClientSession,
    url: URL,
    data: aiohttp.FormData | bytes,
    headers: Mapping[str, str],
    seconds: float,
) -> CallAnswer:
    """Post an SDP offer to ``…/realtime/calls`` and read the call it created, in ``seconds``.

    Raises:
        ProviderError: non-2xx answer, or a 2xx without a usable ``Location``.
        ProviderTimeoutError, ProviderUnreachableError: as for :meth:`Provider.create_call`.
    """
    with _provider_errors("create_call", seconds):
        async with asyncio.timeout(seconds):
            async with http.post(url, data=data, headers=headers) as resp:
                if resp.status not in (200, 201):
                    raise ProviderError(resp.status, await _error_code(resp), "create_call")
                answer = await resp.text()
                location = resp.headers.get("Location", "")
    # Only the last segment is used: Azure's Location has no /openai prefix
    # (/v1/realtime/calls/rtc_…).
    call_id = call_id_from_location(location)
    if call_id is None:
        raise ProviderError(resp.status, "missing_location", "create_call")
    return CallAnswer(call_id=call_id, sdp=answer, location=location)


async def _post_hangup(
    http: aiohttp.ClientSession,
    base: URL,
    call_id: str,
    headers: Mapping[str, str],
    seconds: float,
) -> None:
    """``POST {base}/realtime/calls/{call_id}/hangup`` in ``seconds``.

    Raises:
        CallNotFoundError, ProviderError, ProviderTimeoutError, ProviderUnreachableError: as
            for :meth:`Provider.hangup`.
    """
    await _post_call_control(http, base, call_id, "hangup", None, headers, seconds)


async def _post_call_control(
    http: aiohttp.ClientSession,
    base: URL,
    call_id: str,
    action: str,
    body: Mapping[str, Any] | None,
    headers: Mapping[str, str],
    seconds: float,
) -> None:
    """``POST {base}/realtime/calls/{call_id}/{action}`` (JSON ``body``, if any) in ``seconds``.

    Any 2xx body is ignored, as the SDK does (docs/protocol.md §1.3).

    Raises:
        CallNotFoundError: 404 (the call is gone, or a SIP call stopped ringing).
        ProviderError, ProviderTimeoutError, ProviderUnreachableError: as for
            :meth:`Provider.hangup`.
    """
    url = base / "realtime" / "calls" / call_id / action
    with _provider_errors(action, seconds):
        async with asyncio.timeout(seconds):
            async with http.post(url, json=body, headers=headers) as resp:
                if resp.status == 404:
                    raise CallNotFoundError(404, await _error_code(resp), action)
                if resp.status >= 300:
                    raise ProviderError(resp.status, await _error_code(resp), action)


def _sideband_url(base: URL, call_id: str) -> URL:
    """``{base}/realtime?call_id=…`` over ``ws``/``wss`` (no model, no api-version)."""
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme)
    return (base / "realtime").with_scheme(scheme).with_query(call_id=call_id)


def _session_url(base: URL, model: str) -> URL:
    """``{base}/realtime?model=…`` over ``ws``/``wss``: a WebSocket session of ``model``."""
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme)
    return (base / "realtime").with_scheme(scheme).with_query(model=model)


class OpenAICompatibleProvider:
    """OpenAI Realtime (GA) over the unified interface, or anything that speaks it.

    Args:
        base_url: the API base including the version, e.g. ``https://api.openai.com/v1``.
        api_key: the standard key; used for ``/calls``, hangup and the sideband alike
            (ephemeral keys on the sideband are a known 404 source, docs/protocol.md §2.5).
        http: a shared client session, owned by the caller.
        timeout: seconds allowed for each HTTP request.
        capabilities: what its calls allow (OpenAI's, unless it is another provider that
            speaks the same interface).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        http: aiohttp.ClientSession,
        timeout: float = 10.0,
        name: str = "openai",
        capabilities: ProviderCapabilities = OPENAI_CAPABILITIES,
    ) -> None:
        self._base = URL(base_url.rstrip("/"))
        self._api_key = api_key
        self._http = http
        self._timeout = timeout
        self._name = name
        self._capabilities = capabilities

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self._name!r}, base_url={str(self._base)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def base_url(self) -> str:
        return str(self._base)

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    async def create_call(self, offer_sdp: str, session: Mapping[str, Any]) -> CallAnswer:
        form = aiohttp.FormData()
        form.add_field("sdp", offer_sdp, content_type="application/sdp")
        form.add_field(
            "session", json.dumps(session, separators=(",", ":")), content_type="application/json"
        )
        headers = {**self._auth(), "Accept": "application/sdp"}
        return await _post_offer(
            self._http, self._base / "realtime" / "calls", form, headers, self._timeout
        )

    async def hangup(self, call_id: str) -> None:
        await _post_hangup(self._http, self._base, call_id, self._auth(), self._timeout)

    async def _sip_control(self, call_id: str, action: str, body: Mapping[str, Any]) -> None:
        if not self._capabilities.sip_calls:
            raise ProviderCapabilityError(self._name, "sip_calls", action)
        if not _CALL_ID_RE.match(call_id):
            # The id comes from a webhook: a value that would change the URL's meaning is no
            # call the provider could know.
            raise CallNotFoundError(404, "call_id_not_found", action)
        await _post_call_control(
            self._http, self._base, call_id, action, body, self._auth(), self._timeout
        )

    async def accept_call(self, call_id: str, session: Mapping[str, Any]) -> None:
        await self._sip_control(call_id, "accept", session)

    async def reject_call(self, call_id: str, status_code: int | None = None) -> None:
        # No status: an empty object, so the provider's own default (603) applies.
        body = {} if status_code is None else {"status_code": status_code}
        await self._sip_control(call_id, "reject", body)

    async def refer_call(self, call_id: str, target_uri: str) -> None:
        await self._sip_control(call_id, "refer", {"target_uri": target_uri})

    def sideband_target(self, call_id: str) -> SidebandTarget:
        return SidebandTarget(url=_sideband_url(self._base, call_id), headers=self._auth())

    def session_target(self, model: str) -> SidebandTarget:
        if not self._capabilities.websocket_sessions:
            raise ProviderCapabilityError(self._name, "websocket_sessions", "session_connect")
        return SidebandTarget(url=_session_url(self._base, model), headers=self._auth())
