r"""RFC 8785 (JSON Canonicalization Scheme): one byte string per JSON value.

What is hashed and signed must be the same bytes for the broker that wrote a record and for
a reviewer verifying it years later with another tool, so the audit trail never hashes
``json.dumps`` output (whose spacing, key order and number forms are choices) but this:
no whitespace, object members sorted by their names' UTF-16 code units, strings escaped
only where JSON requires (``\b \t \n \f \r``, other controls as lowercase ``\u00xx``),
numbers in ECMAScript's shortest round-trip form.

The broker's own audit bodies hold no floats (durations are integer milliseconds), so any
conforming implementation reproduces them; floats are still encoded as the RFC says.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["CanonicalJSONError", "canonical", "canonical_text"]


class CanonicalJSONError(ValueError):
    """The value has no canonical form (a non-finite number, a lone surrogate, a bad key)."""


def canonical(value: Any) -> bytes:
    """The RFC 8785 form of ``value`` as UTF-8 bytes."""
    try:
        return canonical_text(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJSONError("a string holds a lone surrogate") from exc


def canonical_text(value: Any) -> str:
    """The RFC 8785 form of ``value`` (``None``, bools, numbers, strings, lists, dicts)."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalJSONError(f"an object member name is not a string: {key!r}")
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_order)):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise CanonicalJSONError(f"not a JSON value: {type(value).__name__}")


def _utf16_order(key: str) -> bytes:
    # RFC 8785 §3.2.3 sorts by UTF-16 code units: big-endian bytes compare the same way.
    # surrogatepass: a lone surrogate fails later, at the UTF-8 encoding of the whole.
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    # json.dumps escapes exactly what RFC 8785 does with ensure_ascii=False: the quote, the
    # backslash, \b \t \n \f \r, other C0 controls as lowercase \u00xx; nothing else.
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    """ECMAScript's Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise CanonicalJSONError("NaN and infinities have no JSON form")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires; only their
    # placement differs.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0").rstrip("0") or "0"
    # The decimal point's position n in ECMAScript's terms: value = 0.digits × 10^n.
    if whole.strip("0"):
        n = len(whole.lstrip("0")) + int(exp_text or 0)
    else:
        n = -(len(fraction) - len(fraction.lstrip("0"))) + int(exp_text or 0)
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
    if k == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp
