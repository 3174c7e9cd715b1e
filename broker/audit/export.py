r"""The export: the chain as JSON lines, read back from the database page by page or a file.

An export is one record per line, each line the record's canonical form
(:meth:`ChainedRecord.line`) and a ``\n``; nothing else, not even a header line, so every
byte of the file belongs to a signed record. Reading one back is strict for the same reason:
a line must decode as UTF-8, parse, be a record, and be *exactly* that record's canonical
form. JSON allows the same record in many spellings (spacing, member order, escapes); a
reader that accepted them would let bytes change without the verification noticing, and the
promise is that any changed byte shows.

Lines are split on ``\n`` alone: :meth:`str.splitlines` would also split on ``\x0b``,
``\x1c``… and so read two records out of one damaged line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit.records import ChainedRecord, RecordFormatError
from broker.db.queries.audit import AuditFilter, audit_records

__all__ = ["PAGE", "database_pages", "export_line", "parse_export_line", "read_export"]

PAGE: Final = 1000
"""Records read from the database per query."""


def export_line(record: ChainedRecord) -> bytes:
    """The record's line in an export, newline included."""
    return record.line().encode("utf-8") + b"\n"


def parse_export_line(raw: bytes) -> ChainedRecord:
    """The record an export line holds.

    Raises:
        RecordFormatError: the line is not UTF-8, not JSON, not a record, not in canonical
            form, or lacks its newline. The message never quotes the line.
    """
    if not raw.endswith(b"\n"):
        raise RecordFormatError("the line does not end with a newline (cut off?)")
    try:
        text = raw[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise RecordFormatError("not UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordFormatError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RecordFormatError("not JSON: nested too deeply") from None
    except ValueError:
        # An integer of more digits than Python converts (sys.get_int_max_str_digits).
        raise RecordFormatError("not JSON this verifier reads: a number too long") from None
    try:
        record = ChainedRecord.from_json(data)
        canonical = record.line()
    except RecordFormatError:
        raise
    except ValueError as exc:
        # CanonicalJSONError (a lone surrogate, say): a record that was never signed.
        raise RecordFormatError(f"no canonical form: {exc}") from None
    if canonical != text:
        raise RecordFormatError("not in canonical form (RFC 8785): the line was rewritten")
    return record


def read_export(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` of an export opened in binary mode, from 1."""
    # A binary file's iteration splits on b"\n" only (see the module docstring).
    yield from enumerate(stream, 1)


async def database_pages(
    sessionmaker: async_sessionmaker[AsyncSession],
    where: AuditFilter | None = None,
    *,
    page: int = PAGE,
) -> AsyncIterator[list[ChainedRecord]]:
    """The chained records matching ``where`` (all by default), ``seq`` order, a page at a time.

    Each page is its own short read, keyed by the last ``seq`` seen, so a long export or
    verification never holds a transaction open against the chainer; records chained
    meanwhile are read too (they only ever come after).
    """
    where = where or AuditFilter()
    after = 0
    while True:
        async with sessionmaker() as s:
            records = await audit_records(s, where, after_seq=after, limit=page)
        if not records:
            return
        yield records
        if len(records) < page:
            return
        after = records[-1].seq
