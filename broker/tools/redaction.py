"""A tool's ``redact`` fields applied to its calls: what a row shows, what it keeps sealed.

For a tool with ``redact`` fields (:mod:`broker.tools.registry`), the ``tool_calls`` row's
``arguments`` and ``output`` hold the redacted text (each field a keyed hash,
:class:`~broker.audit.redaction.FieldRedactor`), which the API and the audit trail show;
``arguments_sealed`` and ``output_sealed`` hold the raw text sealed under the call's
``"<session_id>:<call_id>"``, opened only to run the call (or, for an output, to send it to
the model, again after a restart). A tool without them is stored as it always was: nothing
sealed, nothing changed.
"""

from __future__ import annotations

from broker.audit.redaction import SEALED_PREFIX, FieldRedactor, SealError
from broker.record.redaction import redacted_text
from broker.tools.registry import ToolRegistry

__all__ = ["CallRedaction", "seal_context"]


def seal_context(session_id: str, call_id: str) -> str:
    """What a call's sealed values are bound to: opened for another call, they fail."""
    return f"{session_id}:{call_id}"


def _transit_context(session_id: str, call_id: str) -> str:
    # Apart from the row's seals: a sealed value never opens in the other place.
    return seal_context(session_id, call_id) + ":transit"


class CallRedaction:
    """The registry's ``redact`` fields with the broker's redactor.

    Raises:
        ValueError: a tool has ``redact`` fields and there is no redactor (its arguments
            would otherwise be kept in clear).
    """

    def __init__(self, registry: ToolRegistry, redactor: FieldRedactor | None) -> None:
        self._fields: dict[str, frozenset[str]] = {
            name: spec.redact for name, spec in registry.items() if spec.redact
        }
        if self._fields and redactor is None:
            raise ValueError(
                "tools with redact fields need a redactor: " + ", ".join(sorted(self._fields))
            )
        self._redactor = redactor

    def fields(self, tool: str) -> frozenset[str]:
        return self._fields.get(tool, frozenset())

    def shown(self, tool: str, text: str) -> str:
        """``text`` (arguments or an output) as stored and shown."""
        fields = self.fields(tool)
        if not fields or self._redactor is None:
            return text
        return redacted_text(self._redactor, text, fields)

    def stored(self, session_id: str, call_id: str, tool: str, text: str) -> tuple[str, str | None]:
        """``(shown, sealed)``: what a row keeps of ``text``; ``sealed`` is ``None`` if clear."""
        fields = self.fields(tool)
        if not fields or self._redactor is None:
            return text, None
        return (
            redacted_text(self._redactor, text, fields),
            self._redactor.seal(text, seal_context(session_id, call_id)),
        )

    def in_transit(self, session_id: str, call_id: str, tool: str, text: str) -> str:
        """``text`` as it may cross to another instance (a command row).

        Sealed if it is a redacting tool's, else as is.
        """
        if not self.fields(tool) or self._redactor is None:
            return text
        return self._redactor.seal(text, _transit_context(session_id, call_id))

    def from_transit(self, session_id: str, call_id: str, text: str) -> str:
        """What :meth:`in_transit` sealed, opened; any other text as it is.

        Only the broker's key makes a value that opens, so a page cannot pass off a text of
        its own as sealed: one that does not open is just text (and fails as arguments).
        """
        if self._redactor is None or not text.startswith(SEALED_PREFIX):
            return text
        try:
            return self._redactor.unseal(text, _transit_context(session_id, call_id))
        except SealError:
            return text

    def opened(self, session_id: str, call_id: str, shown: str, sealed: str | None) -> str:
        """The raw text of a row's value: the sealed copy opened, or the shown one if none.

        Raises:
            SealError: the sealed copy does not open (another redaction key, or altered).
        """
        if sealed is None:
            return shown
        if self._redactor is None:
            raise SealError("a sealed value and no redactor to open it")
        return self._redactor.unseal(sealed, seal_context(session_id, call_id))
