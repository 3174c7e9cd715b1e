"""``broker`` under pyinstrument, profiling only when asked: the broker side of ``--profile``.

Run as ``python -m bench.profiled_broker --log-level INFO serve`` (the arguments go to
``broker.cli.main``) with ``BENCH_PROFILE_DIR`` set. SIGUSR1 starts a profile; SIGUSR2
stops it and saves the session as ``profile-N.json`` (N = 1, 2, … in order) in that
directory, written under another name and renamed, so a file that exists is complete.
Next to it, ``profile-N.sql.json`` counts the SQL statements (by verb and table) and the
commits the broker made in the window, so a profile can say how many of each one call costs.

Profiling only between the signals keeps start-up, migrations and session setup out of the
profile: the benchmark wraps exactly the window it wants explained. pyinstrument samples the
main thread (the event loop) every millisecond of wall time, with ``async_mode="disabled"`` so
the stacks are the loop's real ones and idle time shows as ``select``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Engine

from broker.cli import main as broker_main

INTERVAL_S: Final = 0.001
_UPDATE: Final = re.compile(r"^\s*UPDATE\s+\"?(?P<table>\w+)", re.IGNORECASE)
_VERB_TABLE: Final = re.compile(
    r"^\s*(?P<verb>\w+)\b.*?\b(?:INTO|FROM)\s+\"?(?P<table>\w+)", re.IGNORECASE | re.DOTALL
)


def statement_kind(statement: str) -> str:
    """A statement as its verb and table: ``"INSERT session_events"``, ``"UPDATE sessions"``."""
    if (match := _UPDATE.match(statement)) is not None:
        return f"UPDATE {match['table']}"
    if (match := _VERB_TABLE.match(statement)) is not None:
        return f"{match['verb'].upper()} {match['table']}"
    return " ".join(statement.split()[:2]).upper()


class SqlCounter:
    """Counts statements and commits on every engine of the process, while switched on."""

    def __init__(self) -> None:
        self.on = False
        self.statements: Counter[str] = Counter()
        self.commits = 0
        # Class-level listeners see every engine, the broker's async one included (its sync
        # core runs on the event loop's thread, in SQLAlchemy's greenlets).
        event.listen(Engine, "before_cursor_execute", self._execute)
        event.listen(Engine, "commit", self._commit)

    def _execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.on:
            self.statements[statement_kind(statement)] += 1

    def _commit(self, _conn: Any) -> None:
        if self.on:
            self.commits += 1

    def start(self) -> None:
        self.statements.clear()
        self.commits = 0
        self.on = True

    def stop(self) -> dict[str, Any]:
        self.on = False
        return {"statements": dict(self.statements.most_common()), "commits": self.commits}


def main(argv: list[str]) -> int:
    out_dir = Path(os.environ["BENCH_PROFILE_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    # The outermost frame: everything the loop runs is below it, nothing of it is trimmed.
    root_frame = sys._getframe()
    # By name: pyinstrument is the bench extra (``pip install -e '.[bench]'``).
    profiler_class = importlib.import_module("pyinstrument").Profiler
    sql = SqlCounter()
    active: list[Any] = []
    saved = 0

    def start(_signum: int, _frame: FrameType | None) -> None:
        if active:
            return
        profiler = profiler_class(interval=INTERVAL_S, async_mode="disabled")
        sql.start()
        profiler.start(caller_frame=root_frame)
        active.append(profiler)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal saved
        if not active:
            return
        session = active.pop().stop()
        counts = sql.stop()
        saved += 1
        path = out_dir / f"profile-{saved}.json"
        path.with_suffix(".sql.json").write_text(json.dumps(counts))
        partial = path.with_suffix(".partial")
        session.save(str(partial))
        partial.rename(path)  # last: its existence says both files are complete

    # Python runs these in the main thread, between bytecodes of the event loop.
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return broker_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
