"""Azure OpenAI (GA ``/openai/v1``): the two-step offer, and its credentials.

Azure's ``/realtime/calls`` refuses a resource key or an Entra token ("This operation
requires ephemeral tokens", docs/protocol.md §0), so an offer is two requests: mint an
ephemeral client secret carrying the session config, then post the raw SDP with it. The
secret lives for those two requests only: it never leaves this module, and no log line,
event or exception carries it. The sideband, hangup and the mint itself use the resource
credential: an ``api-key`` (:class:`ApiKeyCredential`) or an Entra token printed by a command
(:class:`TokenCommand`), fetched anew for each request and each dial (Entra tokens expire
mid-call).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from yarl import URL

from sideband.errors import CredentialError, ProviderCapabilityError, ProviderError
from sideband.provider import (
    CallAnswer,
    CredentialSource,
    ProviderCapabilities,
    SidebandTarget,
    _error_code,
    _post_hangup,
    _post_offer,
    _provider_errors,
    _sideband_url,
)

logger = logging.getLogger(__name__)

# A token or client secret goes into a header: visible ASCII only, so no output can add a
# header or split a request.
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]{1,16384}")
_MAX_TOKEN_OUTPUT: Final = 64 * 1024
TOKEN_COMMAND_CONCURRENCY: Final = 4
"""Token commands run at once at most: a hundred sidebands re-attaching together must not fork
a hundred ``az`` processes."""


def _usable(token: str) -> bool:
    return _TOKEN_RE.fullmatch(token) is not None


class ApiKeyCredential:
    """An Azure resource key, sent as ``api-key`` (it never expires, so nothing is fetched)."""

    def __init__(self, key: str) -> None:
        self._headers = {"api-key": key}

    def __repr__(self) -> str:
        return "ApiKeyCredential(api-key=***)"

    async def __call__(self) -> Mapping[str, str]:
        return self._headers


class TokenCommand:
    """An Entra access token from a command's standard output, run once per request or dial.

    The command prints the token alone, or the JSON ``az account get-access-token`` prints
    (its ``accessToken``). It runs without a shell, with no input and the broker's environment
    minus its ``BROKER_*`` variables (which hold the broker's own keys); its output never
    reaches a log or an error, and its standard error is discarded (a failing command is
    reported by its exit status: run it by hand to see why).

    Args:
        argv: the program and its arguments.
        timeout: seconds one run may take; past it the command (and its process group) is
            killed.
    """

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        if not argv:
            raise ValueError("a token command needs a program")
        self._argv = tuple(argv)
        self._timeout = timeout
        self._slots = asyncio.Semaphore(TOKEN_COMMAND_CONCURRENCY)

    def __repr__(self) -> str:
        # The program's name only: its arguments may name a tenant or a secret file.
        return f"TokenCommand(program={Path(self._argv[0]).name!r})"

    async def __call__(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        """Run the command and return the token it printed.

        Cancellation-safe: a cancelled run kills the command.

        Raises:
            CredentialError: it could not start, timed out, exited non-zero or printed no
                usable token.
        """
        async with self._slots:
            output = await self._run()
        token = _token_in(output)
        if token is None:
            raise CredentialError("credential", "the token command printed no usable token")
        return token

    async def _run(self) -> bytes:
        env = {name: value for name, value in os.environ.items() if not name.startswith("BROKER_")}
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                # Its own process group, so a timeout kills what a wrapper script started too.
                start_new_session=True,
            )
        except OSError as exc:
            raise CredentialError(
                "credential", f"the token command could not start ({type(exc).__name__})"
            ) from None
        try:
            async with asyncio.timeout(self._timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            raise CredentialError(
                "credential", f"the token command timed out after {self._timeout:g}s"
            ) from None
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.shield(process.wait())
        if process.returncode != 0:
            raise CredentialError(
                "credential", f"the token command exited with status {process.returncode}"
            )
        if len(output) > _MAX_TOKEN_OUTPUT:
            raise CredentialError("credential", "the token command printed too much")
        return output


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _token_in(output: bytes) -> str | None:
    """The token a command printed: the whole output, or ``accessToken`` of its JSON."""
    try:
        text = output.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        found = (
            data.get("accessToken", data.get("access_token")) if isinstance(data, dict) else None
        )
        text = found if isinstance(found, str) else ""
    return text if _usable(text) else None


def azure_capabilities(webrtc_filter: bool) -> ProviderCapabilities:
    """Azure's: a two-step offer, and with ``webrtcfilter=on`` no function calls on the page."""
    return ProviderCapabilities(
        page_sees_function_calls=not webrtc_filter,
        offer_needs_client_secret=True,
        # Azure serves WebSocket sessions too, but at its own deployment path, which this
        # adapter does not build yet: trusted sessions are refused with a clear error.
        websocket_sessions=False,
        # Azure answers SIP too, at its own paths, which this adapter does not build yet.
        sip_calls=False,
    )


class AzureOpenAIProvider:
    """Azure OpenAI's realtime calls over WebRTC, with a sideband (GA ``/openai/v1`` path).

    Args:
        base_url: the resource's API base, ``https://{resource}.openai.azure.com/openai/v1``.
        credential: the resource credential (``api-key`` or an Entra token source), asked
            for each request and each sideband dial.
        http: a shared client session, owned by the caller.
        timeout: seconds allowed for each HTTP request.
        webrtc_filter: post offers with ``?webrtcfilter=on``: the page then sees speech,
            transcripts and output events only, no function calls and no session config.
        name: the provider's name in sessions and logs.
    """

    def __init__(
        self,
        base_url: str,
        credential: CredentialSource,
        http: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        webrtc_filter: bool = True,
        name: str = "azure",
    ) -> None:
        self._base = URL(base_url.rstrip("/"))
        self._credential = credential
        self._http = http
        self._timeout = timeout
        self._webrtc_filter = webrtc_filter
        self._name = name
        self._capabilities = azure_capabilities(webrtc_filter)

    def __repr__(self) -> str:
        return (
            f"AzureOpenAIProvider(name={self._name!r}, base_url={str(self._base)!r},"
            f" webrtc_filter={self._webrtc_filter})"
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def base_url(self) -> str:
        return str(self._base)

    @property
    def capabilities(self) -> ProviderCapabilities:
        return self._capabilities

    async def _auth(self, operation: str) -> Mapping[str, str]:
        try:
            return await self._credential()
        except CredentialError as exc:
            raise CredentialError(operation, exc.reason) from exc

    async def create_call(self, offer_sdp: str, session: Mapping[str, Any]) -> CallAnswer:
        """Mint a client secret with ``session``, then post the SDP with it.

        Raises:
            ProviderError: either request answered a non-success status (``operation``
                ``client_secret`` or ``create_call``), or the mint gave no usable secret.
            ProviderTimeoutError, ProviderUnreachableError (``CredentialError``: no resource
                credential): as for :meth:`Provider.create_call`.
        """
        secret = await self._client_secret(session)
        url = self._base / "realtime" / "calls"
        if self._webrtc_filter:
            url = url.with_query(webrtcfilter="on")
        headers = {
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/sdp",
            "Accept": "application/sdp",
        }
        return await _post_offer(self._http, url, offer_sdp.encode(), headers, self._timeout)

    async def _client_secret(self, session: Mapping[str, Any]) -> str:
        """An ephemeral key bound to ``session`` (``POST …/realtime/client_secrets``)."""
        headers = await self._auth("client_secret")
        with _provider_errors("client_secret", self._timeout):
            async with asyncio.timeout(self._timeout):
                async with self._http.post(
                    self._base / "realtime" / "client_secrets",
                    json={"session": dict(session)},
                    headers=headers,
                ) as resp:
                    if resp.status not in (200, 201):
                        raise ProviderError(resp.status, await _error_code(resp), "client_secret")
                    try:
                        data = await resp.json(content_type=None)
                    except ValueError:
                        data = None
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, str) or not _usable(value):
            raise ProviderError(resp.status, "invalid_client_secret", "client_secret")
        return value

    async def hangup(self, call_id: str) -> None:
        headers = await self._auth("hangup")
        await _post_hangup(self._http, self._base, call_id, headers, self._timeout)

    # Azure answers phone calls too (its SIP how-to), but this adapter does not speak its
    # call control yet: ``sip_calls`` is False, so each refuses before any request.
    async def accept_call(self, call_id: str, session: Mapping[str, Any]) -> None:
        """Refused: this adapter answers no phone calls.

        Raises:
            ProviderCapabilityError: always (``sip_calls`` is False).
        """
        raise ProviderCapabilityError(self.name, "sip_calls", "accept")

    async def reject_call(self, call_id: str, status_code: int | None = None) -> None:
        """Refused: this adapter answers no phone calls.

        Raises:
            ProviderCapabilityError: always (``sip_calls`` is False).
        """
        raise ProviderCapabilityError(self.name, "sip_calls", "reject")

    async def refer_call(self, call_id: str, target_uri: str) -> None:
        """Refused: this adapter answers no phone calls.

        Raises:
            ProviderCapabilityError: always (``sip_calls`` is False).
        """
        raise ProviderCapabilityError(self.name, "sip_calls", "refer")

    def sideband_target(self, call_id: str) -> SidebandTarget:
        async def dial() -> Mapping[str, str]:
            return await self._auth("sideband_attach")

        # No api-version and no model on the v1 path (docs/protocol.md §0).
        return SidebandTarget(url=_sideband_url(self._base, call_id), credential=dial)

    def session_target(self, model: str) -> SidebandTarget:
        """Refused: this provider's sessions are WebRTC calls only.

        Raises:
            ProviderCapabilityError: always (``websocket_sessions`` is False).
        """
        raise ProviderCapabilityError(self.name, "websocket_sessions", "session_connect")
