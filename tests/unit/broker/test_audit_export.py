"""The export's lines: one canonical record each, read back strictly (any other byte fails)."""

from __future__ import annotations

import io
import json

import pytest

from broker.audit.export import export_line, parse_export_line, read_export
from broker.audit.records import ChainedRecord, RecordFormatError, body_sha256, chain_hash
from broker.audit.signing import AuditSigner

SIGNER = AuditSigner.generate()


def _record(body: dict[str, object]) -> ChainedRecord:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    unsigned = ChainedRecord(
        seq=1,
        at="2026-05-01T12:00:00.000000Z",
        session_id="sess_1",
        kind="tool.requested",
        actor="sideband",
        tool="lookup_order",
        decision=None,
        body_text=text,
        body_sha256=body_sha256(text),
        prev_hash="0" * 64,
        hash="",
        key_id=SIGNER.key_id,
        signature="",
    )
    digest = chain_hash(unsigned.prev_hash, unsigned.header())
    return ChainedRecord(
        **(unsigned.__dict__ | {"hash": digest, "signature": SIGNER.sign(bytes.fromhex(digest))})
    )


RECORD = _record({"note": "crème ☕ \u2028", "n": 3})


def test_a_line_reads_back_as_its_record() -> None:
    line = export_line(RECORD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_export_line(line) == RECORD
    # Not ASCII-escaped: RFC 8785 keeps characters as UTF-8.
    assert "crème ☕".encode() in line


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (export_line(RECORD)[:-1], "newline"),
        (export_line(RECORD)[:-1] + b" \n", "canonical"),
        (export_line(RECORD)[:-1] + b"\r\n", "canonical"),
        (json.dumps(RECORD.to_json(), ensure_ascii=False).encode() + b"\n", "canonical"),
        (json.dumps(RECORD.to_json(), sort_keys=True).encode() + b"\n", "canonical"),
        (export_line(RECORD).replace("è".encode(), b"\xe8"), "UTF-8"),
        (export_line(RECORD).replace(b'"seq":1', b'"seq":1,"seq":1'), "canonical"),
        (export_line(RECORD).replace(b'"seq":1', b'"seq":true'), "seq"),
        (export_line(RECORD).replace(b"}\n", b',"x":1}\n'), "members differ"),
        (b"[" * 100_000 + b"\n", "JSON"),
        (b'{"seq":' + b"1" * 5_000 + b"}\n", "too long"),
        (b"\n", "JSON"),
        (b'"\\ud800"\n', "not a JSON object"),
    ],
)
def test_anything_but_the_canonical_line_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(RecordFormatError, match=why) as caught:
        parse_export_line(raw)
    # The message never quotes the line (it may hold what a reviewer should not paste on).
    assert "crème" not in str(caught.value)


def test_lines_split_on_newline_alone() -> None:
    """\\x0b, \\x1c, \\u2028 are line breaks to str.splitlines, not to an export: a damaged
    line that merged two records stays one (unreadable) line."""
    merged = export_line(RECORD)[:-1] + b"\x0b" + export_line(RECORD)
    lines = list(read_export(io.BytesIO(merged + export_line(RECORD))))
    assert [number for number, _ in lines] == [1, 2]
    with pytest.raises(RecordFormatError):
        parse_export_line(lines[0][1])
    assert parse_export_line(lines[1][1]) == RECORD
