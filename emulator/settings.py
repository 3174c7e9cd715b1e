from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Literal

from ._flavors import API_PREFIX, Flavor
from .faults import FaultConfig

SpeechEngine = Literal["auto", "espeak-ng", "tone", "off"]


@dataclass(frozen=True)
class EmulatorSettings:
    """Configuration of one emulator app.

    Attributes:
        api_key: the one standard key accepted as ``Authorization: Bearer <key>`` on every
            route. Excluded from ``repr`` so it never lands in logs.
        ephemeral_sideband_delay: seconds a sideband handshake made with a client secret
            waits before its ``404 call_id_not_found`` (the real service was seen answering
            it only after a while); tests make it short.
        sideband_ready_delay: seconds after call creation during which a sideband handshake
            gets ``404 call_id_not_found``, emulating the race right after ``/calls``
            (docs/protocol.md §2.5 item 6). The ``sideband_unavailable_ms`` fault does the same
            at runtime; the longer of the two applies.
        token_interval: pause between streamed deltas of a response, in seconds.
        replay_session_created_to_sideband: send ``session.created`` to a sideband when it
            attaches (docs/protocol.md §7 uncertainty 1; the real behaviour is undocumented).
        speech: how responses are voiced on the outbound track: ``"auto"`` (espeak-ng when
            installed, else a speech-like tone), ``"espeak-ng"``, ``"tone"``, or ``"off"``
            (silence, and no ``output_audio_buffer`` events).
        faults: the fault switches the app starts with (all off by default); the
            ``/_emulator/faults`` routes change them at runtime and ``DELETE`` restores these.
        flavor: ``"openai"`` serves OpenAI's routes under ``/v1``; ``"azure"`` serves Azure
            OpenAI's GA routes under ``/openai/v1``: the key also as ``api-key``, calls
            created only with client secrets, ``?webrtcfilter=on``, ``rtc_<32 hex>`` call ids
            (emulator/README.md "The Azure flavour").
        heard_default: what a committed user audio turn says when nothing is queued for it
            (``POST /_emulator/calls/{id}/heard``); reported only when the session
            transcribes input audio.
        transcription_delay: seconds between a turn's commit and its first transcription
            event (the real words arrive after the user item, often after the response
            started); later deltas are ``token_interval`` apart.
        sip_webhook_url: where ``POST /_emulator/sip/ring`` posts ``realtime.call.incoming``
            (the ring request may name another); ``None``: nowhere unless it does.
        sip_webhook_secret: the ``whsec_<base64>`` secret those deliveries are signed with.
            Excluded from ``repr``.
        sip_ring_timeout: seconds a phone call rings unanswered before it ends
            (``ring_timeout``); accepting it later gets 404 ``call_id_not_found``.
    """

    api_key: str = field(repr=False)
    sideband_ready_delay: float = 0.0
    token_interval: float = 0.002
    replay_session_created_to_sideband: bool = False
    speech: SpeechEngine = "auto"
    faults: FaultConfig = field(default_factory=FaultConfig)
    ephemeral_sideband_delay: float = 1.0
    heard_default: str = "Hello, can you help me?"
    transcription_delay: float = 0.05
    flavor: Flavor = "openai"
    sip_webhook_url: str | None = None
    sip_webhook_secret: str | None = field(default=None, repr=False)
    sip_ring_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.flavor not in API_PREFIX:
            raise ValueError(f"flavor must be one of {sorted(API_PREFIX)}, not {self.flavor!r}")
        if self.sip_webhook_secret is not None and not _is_webhook_secret(self.sip_webhook_secret):
            raise ValueError("sip_webhook_secret must be whsec_ followed by base64")
        if self.sip_ring_timeout <= 0:
            raise ValueError("sip_ring_timeout must be positive")


def _is_webhook_secret(secret: str) -> bool:
    prefix = "whsec_"
    if not secret.startswith(prefix):
        return False
    try:
        return bool(base64.b64decode(secret.removeprefix(prefix), validate=True))
    except binascii.Error:
        return False
