"""Phone calls (SIP): a ringing call, its signed ``realtime.call.incoming`` webhook, and after.

At the real service a SIP trunk points at the project; a call rings there, the service posts
a Standard-Webhooks-signed ``realtime.call.incoming`` to the project's webhook URL
(docs/protocol.md §1.4), and the server answers with ``POST /v1/realtime/calls/{id}/accept``
(the session config), ``/reject`` or ``/refer`` (§1.3). The emulator plays the service and
the phone network both: ``POST /_emulator/sip/ring`` makes a :class:`SipCall` ring and
delivers the webhook; the admin routes then let the caller speak, press keys and hang up.

A SIP call has no WebRTC peer: its model speech plays on a
:class:`~emulator._phone_line.PhoneLine` (in real time, to nobody; ``output_audio_buffer.*``
events as over WebRTC) and the caller's audio is fed to the call's input path (server VAD,
commit, transcription) by :meth:`SipCall.say`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp

from ._phone_line import PhoneLine, spoken_turn
from ._session import initial_session, turn_detection
from ._speaker import Speaker
from ._transcription import Spoken
from .audio import SAMPLE_RATE, VadConfig
from .calls import Call
from .faults import Faults
from .settings import EmulatorSettings

logger = logging.getLogger(__name__)

SipState = Literal["ringing", "live", "ended"]
SIP_DOMAIN: Final = "sip.api.openai.com"
"""The host of the ``To`` URI: where a trunk sends the project's calls (§1.4)."""
WEBHOOK_USER_AGENT: Final = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
WEBHOOK_TIMEOUT_S: Final = 10.0
SECRET_PREFIX: Final = "whsec_"
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (Standard Webhooks, as OpenAI's).

    Raises:
        ValueError: not ``whsec_`` followed by base64.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret must start with whsec_")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    if not key:
        raise ValueError("a whsec_ secret must hold a key")
    return key


def webhook_signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sip_headers(to: str, from_: str, extra: list[dict[str, str]]) -> list[dict[str, str]]:
    """The SIP headers of an incoming INVITE from ``from_`` to ``to``, then ``extra``."""
    tag = secrets.token_hex(4)
    return [
        {"name": "From", "value": f'"{from_}" <sip:{from_}@sip.example.net>;tag={tag}'},
        {"name": "To", "value": f"<sip:{to}@{SIP_DOMAIN}>"},
        {"name": "Call-ID", "value": str(uuid.uuid4())},
        {"name": "CSeq", "value": "1 INVITE"},
        {"name": "Contact", "value": f"<sip:{from_}@203.0.113.10:5060>"},
        *extra,
    ]


@dataclass
class WebhookDelivery:
    """The ``realtime.call.incoming`` delivery of one ringing call; every attempt sends it.

    Attributes:
        webhook_id: the ``webhook-id`` header, the same on every attempt (receivers
            deduplicate by it).
        body: the exact JSON body signed and sent.
        url: where it goes (the setting, or the ring request's override).
        attempts: each attempt's ``{"timestamp", "url", "status"}``, in order.
    """

    webhook_id: str
    body: bytes
    url: str | None
    secret: str | None = field(repr=False)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def headers(self, timestamp: int) -> dict[str, str]:
        """The attempt's headers, signed at ``timestamp``.

        Raises:
            ValueError: no secret, or a malformed one.
        """
        if self.secret is None:
            raise ValueError("no webhook secret")
        return {
            "Content-Type": "application/json",
            "User-Agent": WEBHOOK_USER_AGENT,
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook_signature(
                self.secret, self.webhook_id, timestamp, self.body
            ),
        }

    async def send(self, *, timestamp: int | None = None, url: str | None = None) -> int | str:
        """Post the delivery once; return the receiver's HTTP status or why there is none.

        Signed anew at ``timestamp`` (default now), sent to ``url`` (default :attr:`url`).
        Without a status: ``"not_configured"`` (no URL), ``"timeout"``, ``"unreachable"``.
        """
        target = url or self.url
        stamp = int(time.time()) if timestamp is None else timestamp
        status: int | str
        if target is None:
            status = "not_configured"
        else:
            try:
                async with (
                    asyncio.timeout(WEBHOOK_TIMEOUT_S),
                    aiohttp.ClientSession() as http,
                    http.post(target, data=self.body, headers=self.headers(stamp)) as resp,
                ):
                    status = resp.status
            except TimeoutError:
                status = "timeout"
            except aiohttp.ClientError as exc:
                logger.info("webhook %s: delivery failed: %r", self.webhook_id, exc)
                status = "unreachable"
        self.attempts.append({"timestamp": stamp, "url": target, "status": status})
        logger.info("webhook %s delivered status=%s", self.webhook_id, status)
        return status


def incoming_event(call_id: str, headers: list[dict[str, str]]) -> dict[str, Any]:
    """The ``realtime.call.incoming`` event (docs/protocol.md §1.4)."""
    return {
        "id": f"evt_{secrets.token_hex(16)}",
        "object": "event",
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {"call_id": call_id, "sip_headers": headers},
    }


class SipCall(Call):
    """A phone call: rings until accepted, rejected, referred or given up on.

    Ringing, it has a default session and no worker; sidebands get 404 and so do client
    events (none can arrive). :meth:`accept` makes it live with the accepted session; from
    then on it is a call like any other, its media a :class:`PhoneLine`.

    Attributes (for inspection): ``sip_headers``, ``webhook``, ``accepted`` (and the event
    ``answered``),
    ``reject_status_code``, ``referred_to``, ``phone`` (what the model said, as durations).
    """

    def __init__(
        self,
        call_id: str,
        headers: list[dict[str, str]],
        settings: EmulatorSettings,
        faults: Faults | None = None,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        super().__init__(call_id, initial_session(None, None), settings, faults, media="sip")
        self.sip_headers = headers
        self.accepted = False
        self.answered = asyncio.Event()  # set by accept (tests wait on it)
        self.reject_status_code: int | None = None
        self.referred_to: str | None = None
        self.phone = PhoneLine()
        self._speaker = Speaker(self.phone, self.broadcast, settings.speech)
        event = incoming_event(call_id, headers)
        self.webhook = WebhookDelivery(
            webhook_id=f"wh_{secrets.token_hex(16)}",
            body=json.dumps(event, separators=(",", ":")).encode(),
            url=webhook_url,
            secret=webhook_secret,
        )
        self._ring_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> SipState:
        if self.ended:
            return "ended"
        return "live" if self.accepted else "ringing"

    def ring(self, timeout_s: float) -> None:
        """Start ringing; unanswered for ``timeout_s``, the call ends (``ring_timeout``)."""
        self._ring_task = self._spawn(self._ring(timeout_s), f"sip-ring:{self.call_id}")

    async def _ring(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        if self.state == "ringing":
            logger.info("call %s: nobody answered in %ss", self.call_id, timeout_s)
            await self.end("ring_timeout")

    def accept(self, session: dict[str, Any]) -> None:
        """Answer the ringing call with ``session`` (validated, effective); start serving it.

        The sideband's readiness window (``sideband_ready_delay``, the
        ``sideband_unavailable_ms`` fault) counts from now.
        """
        self.session = session
        self._input.configure(turn_detection(session))
        self.accepted = True
        self.answered.set()
        self.created_at = time.monotonic()
        if self._ring_task is not None:
            self._ring_task.cancel()
        self._spawn(self._work(), f"call-worker:{self.call_id}")
        logger.info("call %s: accepted model=%s", self.call_id, session.get("model"))

    def sideband_ready(self) -> bool:
        """Only an answered call takes sidebands."""
        return self.accepted and super().sideband_ready()

    def say(self, text: str) -> None:
        """The caller says ``text``: its audio enters the input path like RTP from the phone.

        Under server VAD the turn is detected, committed (transcribed as ``text`` if the
        session transcribes) and answered as configured; without turn detection the audio
        waits in the input buffer for a client's commit. Either way the model understands
        ``text`` (:class:`~emulator._transcription.Spoken`).
        """
        self.heard.extend([Spoken(text)])
        config = VadConfig.from_turn_detection(turn_detection(self.session)) or VadConfig()
        for chunk in spoken_turn(text, config.silence_duration_ms):
            self._on_audio(chunk, SAMPLE_RATE)

    def press(self, digits: str) -> None:
        """The caller presses ``digits``: one ``input_audio_buffer.dtmf_event_received`` each.

        The event has no ``event_id`` (docs/protocol.md §0, "SIP").
        """
        for digit in digits:
            self.broadcast(
                {
                    "type": "input_audio_buffer.dtmf_event_received",
                    "event": digit,
                    "received_at": int(time.time()),
                }
            )

    async def end(self, reason: str, *, close_code: int = 1000, abort: bool = False) -> None:
        self.phone.close()
        await super().end(reason, close_code=close_code, abort=abort)

    def snapshot(self) -> dict[str, Any]:
        """The call's snapshot, plus what a phone call has."""
        return {
            **super().snapshot(),
            "media": self.media,
            "state": self.state,
            "sip_headers": self.sip_headers,
            "webhook_id": self.webhook.webhook_id,
            "webhook_body": json.loads(self.webhook.body),
            "deliveries": list(self.webhook.attempts),
            "reject_status_code": self.reject_status_code,
            "referred_to": self.referred_to,
            "model_audio_ms": list(self.phone.played_ms),
        }
