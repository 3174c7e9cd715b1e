"""``BrokerClient`` and ``AsyncBrokerClient``: the broker's session API over ``httpx``.

Both build the same requests and read the same answers (the module functions below); only
the transport differs. An error answer raises the :mod:`broker_client.errors` class of its
status, carrying the broker's ``code``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import httpx

from broker_client.errors import BrokerUnreachableError, error_from_response
from broker_client.models import (
    CreatedSession,
    Session,
    SessionPage,
    SessionReconfigured,
    SessionSummary,
)

DEFAULT_TIMEOUT_S: Final = 30.0
"""Long enough for a hang-up, which waits for the provider."""
USER_AGENT: Final = "sideband-broker-client/0.1"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""``input_transcription`` left out: the broker's default model (``None`` asks for none)."""


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None


def _session_path(session_id: str) -> str:
    # Quoted whole: an id from user input cannot reach another route.
    return f"/api/v1/sessions/{quote(session_id, safe='')}"


def _create_call(
    tools: Iterable[str],
    model: str | None,
    voice: str | None,
    instructions: str | None,
    sideband: bool,
    metadata: Mapping[str, str | int | float | bool] | None,
    limits: Mapping[str, Any] | None,
    input_transcription: Mapping[str, Any] | None | _Unset,
) -> _Call:
    body: dict[str, Any] = {"tools": list(tools), "sideband": sideband}
    for name, value in (("model", model), ("voice", voice), ("instructions", instructions)):
        if value is not None:
            body[name] = value
    if metadata:
        body["metadata"] = dict(metadata)
    if limits:
        body["limits"] = dict(limits)
    if not isinstance(input_transcription, _Unset):
        body["input_transcription"] = (
            None if input_transcription is None else dict(input_transcription)
        )
    return _Call("POST", "/api/v1/sessions", json=body)


def _iso(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


def _list_call(
    state: str | Iterable[str] | None,
    model: str | None,
    tool: str | None,
    created_after: datetime | str | None,
    created_before: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> _Call:
    params: dict[str, str] = {}
    if state is not None:
        params["state"] = state if isinstance(state, str) else ",".join(state)
    if model is not None:
        params["model"] = model
    if tool is not None:
        params["tool"] = tool
    if created_after is not None:
        params["created_after"] = _iso(created_after)
    if created_before is not None:
        params["created_before"] = _iso(created_before)
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return _Call("GET", "/api/v1/sessions", params=params)


def _hang_up_call(session_id: str, reason: str | None) -> _Call:
    body = None if reason is None else {"reason": reason}
    return _Call("POST", f"{_session_path(session_id)}/hangup", json=body)


def _reconfigure_call(
    session_id: str, instructions: str | None, tools: Iterable[str] | None
) -> _Call:
    if instructions is None and tools is None:
        raise ValueError("give instructions, tools or both")
    if isinstance(tools, str):
        # A lone name would be sent as its letters: the set is a list of names.
        raise TypeError("tools is a list of tool names, not one name")
    body: dict[str, Any] = {}
    if instructions is not None:
        body["instructions"] = instructions
    if tools is not None:
        body["tools"] = list(tools)
    return _Call("POST", f"{_session_path(session_id)}/config", json=body)


def _transfer_call(session_id: str, target_uri: str) -> _Call:
    return _Call("POST", f"{_session_path(session_id)}/transfer", json={"target_uri": target_uri})


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def _request_kwargs(base_url: str, headers: dict[str, str], call: _Call) -> dict[str, Any]:
    """The ``httpx`` ``request`` arguments for ``call``, the same for both transports."""
    kwargs: dict[str, Any] = {
        "method": call.method,
        "url": base_url + call.path,
        "headers": headers,
        "params": call.params,
    }
    if call.json is not None:
        kwargs["content"] = json.dumps(call.json).encode()
        kwargs["headers"] = headers | {"Content-Type": "application/json"}
    return kwargs


def _read(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or the typed error it stands for."""
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.content, response.headers)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise error_from_response(response.status_code, b"", response.headers)
    return data


def _unreachable(exc: httpx.TransportError) -> BrokerUnreachableError:
    # The exception's class names the failure; its message may carry the URL, not a secret.
    return BrokerUnreachableError(f"no answer from the broker ({type(exc).__name__})")


class BrokerClient:
    """The broker's session API, blocking.

    Args:
        base_url: the broker's root, e.g. ``https://broker.internal:8080``.
        api_key: an API key (``bk_…``) with the scopes the calls need: ``sessions:create``
            to create (and read and reconfigure your own sessions), ``monitor:read`` to list,
            ``admin`` to hang up.
        timeout: seconds per request.
        http: an ``httpx.Client`` of your own (proxies, TLS); closed by you, not here.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http: httpx.Client | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = _headers(api_key)
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"BrokerClient({self._base_url!r})"

    def _send(self, call: _Call) -> dict[str, Any]:
        try:
            response = self._http.request(**_request_kwargs(self._base_url, self._headers, call))
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None
        return _read(response)

    def create_session(
        self,
        *,
        tools: Iterable[str] = (),
        model: str | None = None,
        voice: str | None = None,
        instructions: str | None = None,
        sideband: bool = True,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        limits: Mapping[str, Any] | None = None,
        input_transcription: Mapping[str, Any] | None | _Unset = UNSET,
    ) -> CreatedSession:
        """Create a session; pass its ``raw`` (or ``id`` and ``client_secret``) to the page.

        ``None`` leaves a field to the broker's default, except ``input_transcription``,
        where ``None`` asks for no transcription and leaving it out for the default model.
        """
        call = _create_call(
            tools, model, voice, instructions, sideband, metadata, limits, input_transcription
        )
        return CreatedSession.from_json(self._send(call))

    def get_session(self, session_id: str) -> Session:
        return Session.from_json(self._send(_Call("GET", _session_path(session_id))))

    def list_sessions(
        self,
        *,
        state: str | Iterable[str] | None = None,
        model: str | None = None,
        tool: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page, newest first (``monitor:read``); ``tool``: sessions that called it."""
        call = _list_call(state, model, tool, created_after, created_before, limit, cursor)
        return SessionPage.from_json(self._send(call))

    def iter_sessions(
        self,
        *,
        state: str | Iterable[str] | None = None,
        model: str | None = None,
        tool: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[SessionSummary]:
        """Every matching session, following ``next_cursor`` page by page."""
        states = state if state is None or isinstance(state, str) else tuple(state)
        cursor: str | None = None
        while True:
            page = self.list_sessions(
                state=states,
                model=model,
                tool=tool,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.sessions
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def hang_up(self, session_id: str, *, reason: str | None = None) -> bool:
        """End a live call at the provider (``admin``); ``session_not_live`` when none runs."""
        return bool(self._send(_hang_up_call(session_id, reason)).get("hung_up"))

    def reconfigure(
        self,
        session_id: str,
        *,
        instructions: str | None = None,
        tools: Iterable[str] | None = None,
    ) -> SessionReconfigured:
        """Change a live call's instructions and/or tools; returns once the provider took them.

        For the key that created the session, or an ``admin`` key of its tenant. ``tools`` is
        the whole new set (registry names; ``[]``: none); ``None`` leaves a field as it is.
        A refused or unconfirmed change leaves the call's config as it was.

        Raises:
            ValueError: neither ``instructions`` nor ``tools`` given (nothing is sent).
            TypeError: ``tools`` is a string, not a list of names.
            PermissionDeniedError: ``insufficient_scope`` (neither the session's key nor an
                admin), ``tool_not_granted`` (outside the key's grants).
            NotFoundError: ``session_not_found`` (unknown, or another tenant's).
            ConflictError: ``session_not_live``, ``sideband_not_connected``.
            ValidationError: ``unknown_tool``, ``provider_lacks_capability``,
                ``invalid_request`` (say, empty instructions).
            UpstreamError: ``provider_refused_update`` (502), ``provider_timeout`` (504).
            UnavailableError: ``owner_unavailable`` (the instance running the call did not
                answer).
        """
        call = _reconfigure_call(session_id, instructions, tools)
        return SessionReconfigured.from_json(self._send(call))

    def transfer(self, session_id: str, target_uri: str) -> bool:
        """Transfer a live phone call to ``tel:+…`` or a ``sip:`` URI (SIP refer; ``admin``).

        ``not_a_phone_call`` for a session that is no phone call.
        """
        return bool(self._send(_transfer_call(session_id, target_uri)).get("transferred"))

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncBrokerClient:
    """:class:`BrokerClient` for asyncio (the same arguments, with ``httpx.AsyncClient``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = _headers(api_key)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:
        return f"AsyncBrokerClient({self._base_url!r})"

    async def _send(self, call: _Call) -> dict[str, Any]:
        try:
            response = await self._http.request(
                **_request_kwargs(self._base_url, self._headers, call)
            )
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None
        return _read(response)

    async def create_session(
        self,
        *,
        tools: Iterable[str] = (),
        model: str | None = None,
        voice: str | None = None,
        instructions: str | None = None,
        sideband: bool = True,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        limits: Mapping[str, Any] | None = None,
        input_transcription: Mapping[str, Any] | None | _Unset = UNSET,
    ) -> CreatedSession:
        """See :meth:`BrokerClient.create_session`."""
        call = _create_call(
            tools, model, voice, instructions, sideband, metadata, limits, input_transcription
        )
        return CreatedSession.from_json(await self._send(call))

    async def get_session(self, session_id: str) -> Session:
        return Session.from_json(await self._send(_Call("GET", _session_path(session_id))))

    async def list_sessions(
        self,
        *,
        state: str | Iterable[str] | None = None,
        model: str | None = None,
        tool: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SessionPage:
        call = _list_call(state, model, tool, created_after, created_before, limit, cursor)
        return SessionPage.from_json(await self._send(call))

    async def iter_sessions(
        self,
        *,
        state: str | Iterable[str] | None = None,
        model: str | None = None,
        tool: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[SessionSummary]:
        states = state if state is None or isinstance(state, str) else tuple(state)
        cursor: str | None = None
        while True:
            page = await self.list_sessions(
                state=states,
                model=model,
                tool=tool,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            for summary in page.sessions:
                yield summary
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def hang_up(self, session_id: str, *, reason: str | None = None) -> bool:
        return bool((await self._send(_hang_up_call(session_id, reason))).get("hung_up"))

    async def reconfigure(
        self,
        session_id: str,
        *,
        instructions: str | None = None,
        tools: Iterable[str] | None = None,
    ) -> SessionReconfigured:
        """See :meth:`BrokerClient.reconfigure`."""
        call = _reconfigure_call(session_id, instructions, tools)
        return SessionReconfigured.from_json(await self._send(call))

    async def transfer(self, session_id: str, target_uri: str) -> bool:
        return bool((await self._send(_transfer_call(session_id, target_uri))).get("transferred"))

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
