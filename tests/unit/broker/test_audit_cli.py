"""``broker audit``'s pieces: times, the progress line, the summary, its help text."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from broker.audit.cli import _time
from broker.audit.report import Progress, Trust, _ranges, summary
from broker.audit.signing import PublicKeys
from broker.audit.verify import Checkpoint, VerifyReport
from broker.cli import main

REST_MARKUP = re.compile(r"``|:(class|func|meth|data|mod|attr):`|\.\. [a-z]+::")


@pytest.mark.parametrize(
    ("given", "at"),
    [
        ("2026-05-01", "2026-05-01T00:00:00.000000Z"),
        ("2026-05-01T12:30:00Z", "2026-05-01T12:30:00.000000Z"),
        ("2026-05-01T14:30:00+02:00", "2026-05-01T12:30:00.000000Z"),
        ("2026-05-01 12:30:00.25", "2026-05-01T12:30:00.250000Z"),
    ],
)
def test_times_become_record_times_in_utc(given: str, at: str) -> None:
    assert _time(given) == at


def test_a_time_that_is_not_iso_8601_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        _time("last tuesday")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_ends_its_line() -> None:
    stream = Tty()
    progress = Progress(stream, total=2_000, unit="records", enabled=True)
    progress.update(1_000, 1_000, final=True)
    progress.update(2_000, 2_000, final=True)
    progress.close()
    text = stream.getvalue()
    assert "\rverifying 1,000 / 2,000 records  50%" in text
    assert "\rverifying 2,000 / 2,000 records 100%" in text
    assert text.endswith("\n")


@pytest.mark.parametrize(("stream", "enabled"), [(io.StringIO(), True), (Tty(), False)])
def test_progress_is_silent_off_a_terminal_or_when_quiet(
    stream: io.StringIO, enabled: bool
) -> None:
    progress = Progress(stream, total=10, unit="bytes", enabled=enabled)
    progress.update(5, 5, final=True)
    progress.close()
    assert stream.getvalue() == ""


def test_ranges_are_compact() -> None:
    assert _ranges([2, 3, 4, 7, 9, 10]) == "2-4, 7, 9-10"
    assert _ranges(list(range(1, 40, 2)), most=3) == "1, 3, 5, …"


def test_the_summary_says_what_was_and_was_not_checked() -> None:
    report = VerifyReport(
        records=5, first_seq=1, last_seq=5, last_hash="ab" * 32, erased=[2, 3], erasures=1
    )
    report.keys.add("k1")
    lines = "\n".join(summary(report, Trust(PublicKeys(), pinned=True)))
    assert "audit chain intact: 5 records, seq 1 to 5" in lines
    assert "k1 (pinned with --public-key)" in lines
    assert "2 record bodies (seq 2-3), each announced" in lines
    assert "none given: a cut-off of the newest records would not show" in lines
    report.checkpoint = Checkpoint(5, "ab" * 32, "k1", "cd" * 64)
    partial = "\n".join(summary(report, Trust(PublicKeys(), pinned=False), partial=True))
    assert "(partial)" in partial and "left out" in partial
    assert "checkpoint  seq 5 matched" in partial
    assert "see the WARNING" in partial


@pytest.mark.parametrize(
    "argv",
    [
        ("audit", "--help"),
        ("audit", "verify", "--help"),
        ("audit", "export", "--help"),
        ("audit", "public-key", "--help"),
        ("audit", "checkpoint", "--help"),
    ],
)
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: broker audit")
    assert REST_MARKUP.search(out) is None, out
    assert all(len(line) <= 100 for line in out.splitlines()), out
