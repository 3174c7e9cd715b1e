from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmulatorSettings:
    """Configuration of one emulator app.

    Attributes:
        api_key: the one standard key accepted as ``Authorization: Bearer <key>`` on every
            route. Excluded from ``repr`` so it never lands in logs.
        sideband_ready_delay: seconds after call creation during which a sideband handshake
            gets ``404 call_id_not_found``, emulating the race right after ``/calls``
            (PROTOCOL.md §2.5 item 6).
        token_interval: pause between streamed deltas of a response, in seconds.
        replay_session_created_to_sideband: send ``session.created`` to a sideband when it
            attaches (PROTOCOL.md §7 uncertainty 1; the real behaviour is undocumented).
    """

    api_key: str = field(repr=False)
    sideband_ready_delay: float = 0.0
    token_interval: float = 0.002
    replay_session_created_to_sideband: bool = False
