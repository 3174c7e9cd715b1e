"""What a function call's ``call_id`` may be, on every path, and how an invalid one is kept.

A call id reaches the broker from the model (the sideband) or from a page (the bridge), and
goes on into a tool backend's ``X-Call-ID`` and ``Idempotency-Key`` headers, the database
and the logs. One rule for both paths (:func:`is_valid_call_id`): 1 to :data:`MAX_CALL_ID`
characters from :data:`CALL_ID_CHARS` — what OpenAI's ids (``call_…``) use and what any
header, log line or URL carries without escaping. A call with any other id never runs: it is
denied ``call_id_invalid`` before anything is sent, and recorded under
:func:`recorded_call_id`, a safe stand-in that never equals a valid id.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

MAX_CALL_ID: Final = 128
"""The longest call id (the ``tool_calls.call_id`` column's width)."""
CALL_ID_CHARS: Final = r"A-Za-z0-9_.\-"
"""The characters a call id may hold, as a regex character-class body."""
CALL_ID_PATTERN: Final = rf"^[{CALL_ID_CHARS}]{{1,{MAX_CALL_ID}}}$"
"""The rule as a pattern for pydantic (whose ``$`` is the end of the text, unlike Python's
``re``, where ``$`` also matches before a final newline: :func:`is_valid_call_id` uses
``fullmatch`` for that reason)."""
_VALID: Final = re.compile(rf"[{CALL_ID_CHARS}]{{1,{MAX_CALL_ID}}}")

_INVALID_PREFIX: Final = "invalid:"
"""``:`` is not a call id character, so a stand-in never collides with a real id."""
_DIGEST_CHARS: Final = 16
_SHOWN_CHARS: Final = 48


def is_valid_call_id(call_id: object) -> bool:
    """Whether ``call_id`` may be recorded, sent to a tool backend and logged as it is."""
    return isinstance(call_id, str) and _VALID.fullmatch(call_id) is not None


def printable(value: str, limit: int = _SHOWN_CHARS) -> str:
    """``value`` cut to ``limit`` characters, then escaped to printable ASCII.

    Control characters, non-ASCII and backslashes become Python escapes (a carriage return
    shows as backslash-r, an e-acute as backslash-xe9), so a log line or a stored field
    shows what was sent and can never be split, forged or mis-encoded by it.
    """
    escaped = value[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(value) > limit else "")


def recorded_call_id(call_id: str) -> str:
    """The id a call is recorded (and logged) under: itself if valid, else a safe stand-in.

    The stand-in is ``invalid:<16 hex of SHA-256>:<escaped start of the id>``: stable (a
    second report of the same call finds the first one's record, so it is answered once),
    distinct per id, at most :data:`MAX_CALL_ID` printable ASCII characters, and never a
    valid id.
    """
    if is_valid_call_id(call_id):
        return call_id
    raw = call_id.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_CHARS]
    return f"{_INVALID_PREFIX}{digest}:{printable(call_id)}"[:MAX_CALL_ID]
