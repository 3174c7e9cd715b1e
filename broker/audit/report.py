"""How ``broker audit verify`` shows its work: the progress line, the summary, the warning."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from broker.audit.signing import PublicKeys
from broker.audit.verify import VerifyReport

__all__ = ["DATABASE_KEYS_WARNING", "Progress", "Trust", "summary"]

PROGRESS_EVERY_S: Final = 0.1

DATABASE_KEYS_WARNING: Final = """\
WARNING: trusting the public keys stored in the database being verified. That proves the
chain did not change by accident, not that nobody changed it: whoever can write the database
can add a key of their own and re-sign. Pin the keys you trust with --public-key (from
`broker audit public-key` on the broker's host, kept elsewhere)."""


class Progress:
    """``done / total`` and a rate on one rewritten line of a terminal; nothing otherwise.

    A pipe or a log file gets no progress: carriage returns would be noise in it.
    """

    def __init__(self, stream: TextIO, *, total: int, unit: str, enabled: bool) -> None:
        self._stream = stream
        self._total = total
        self._unit = unit
        self._enabled = enabled and stream.isatty()
        self._started = time.monotonic()
        self._shown = 0.0
        self._drawn = False

    def update(self, records: int, done: int, *, final: bool = False) -> None:
        """``records`` verified so far; ``done`` of ``total`` (records, or bytes of a file)."""
        if not self._enabled:
            return
        now = time.monotonic()
        if not final and now - self._shown < PROGRESS_EVERY_S:
            return
        self._shown = now
        # Records chained while the database is read come after the count: never past 100%.
        total = max(self._total, done)
        rate = records / max(now - self._started, 1e-6)
        share = f"{100 * done / total:3.0f}%" if total else "100%"
        if self._unit == "records":
            amount = f"{done:,} / {total:,} records"
        else:
            amount = f"{records:,} records, {_mb(done)} / {_mb(total)}"
        self._stream.write(f"\rverifying {amount} {share}  {rate:,.0f} records/s ")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


@dataclass(frozen=True)
class Trust:
    keys: PublicKeys
    pinned: bool
    """From ``--public-key`` (else: the database's own ``audit_keys``)."""


def summary(report: VerifyReport, trust: Trust, *, partial: bool = False) -> list[str]:
    """The lines ``verify`` prints when the chain is intact."""
    if report.records == 0:
        head = "no records"
    else:
        head = f"{report.records:,} records, seq {report.first_seq} to {report.last_seq}"
    if partial:
        lines = [f"audit export authentic (partial): {head}"]
        lines.append(
            f"  links       {report.links:,} between consecutive records; records left out of"
            " a filtered export do not show"
        )
    else:
        lines = [f"audit chain intact: {head}"]
    if report.last_seq is not None:
        last = "last" if partial else "head"
        lines.append(f"  {last}        seq {report.last_seq} hash {report.last_hash}")
    source = "pinned with --public-key" if trust.pinned else "from the database: see the WARNING"
    lines.append(f"  keys        {', '.join(sorted(report.keys)) or 'none used'} ({source})")
    if report.erased:
        lines.append(
            f"  erased      {len(report.erased):,} record bodies (seq {_ranges(report.erased)}),"
            f" each announced by an audit.erased record ({report.erasures} erasures)"
        )
    else:
        lines.append(f"  erased      no bodies ({report.erasures} audit.erased records)")
    checkpoint = report.checkpoint
    if checkpoint is not None:
        lines.append(f"  checkpoint  seq {checkpoint.seq} matched, hash {checkpoint.hash}")
    else:
        lines.append(
            "  checkpoint  none given: a cut-off of the newest records would not show"
            " (--expect-head)"
        )
    return lines


def _ranges(seqs: Sequence[int], most: int = 12) -> str:
    spans: list[tuple[int, int]] = []
    for seq in seqs:
        if spans and seq == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], seq)
        else:
            spans.append((seq, seq))
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans[:most])
    return text + (", …" if len(spans) > most else "")
