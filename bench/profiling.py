"""Profiles of the broker during a benchmark window, reduced to what dominates.

Two samplers, one summary:

* ``pyinstrument`` (the default of ``--profile``): the broker runs under
  :mod:`bench.profiled_broker` and profiles its main thread (the event loop) between two
  signals. Wall-clock samples: time the loop waits in ``select`` is idle and left out of the
  shares below.
* ``py-spy``: sampled from outside (``py-spy record --pid``) with every thread, the
  database driver's worker threads included; only threads that are running are sampled.

The summary gives the share of busy samples per package (the leaf frame's file), the
functions with the most self time, and the broker's own functions with the most inclusive
time (which part of the broker the time is spent under); pyinstrument's call tree follows.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shutil
import signal
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

Frame = tuple[str, str]
"""``(function, file)`` of one stack frame."""
Record = tuple[Sequence[Frame], float]
"""One sample: its stack (outermost first) and its weight (seconds or a count)."""

APP_PACKAGES: Final = ("broker/", "sideband/", "emulator/", "bench/")
_ENTRY_POINTS: Final = ("bench/profiled_broker.py", "broker/cli.py", "broker/__main__.py")
"""Frames above the event loop: every sample is under them, so they explain nothing."""
TOP_FUNCTIONS: Final = 25
TREE_LINES: Final = 150

# Leaf-file patterns and the package they are reported as, first match wins.
_PACKAGES: Final = (
    ("selectors.py", "idle (select)"),
    ("sqlalchemy/", "sqlalchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("asyncpg/", "asyncpg"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "yarl"),
    ("multidict/", "multidict"),
    ("pydantic", "pydantic"),
    ("jsonschema", "jsonschema"),
    ("referencing/", "jsonschema"),
    ("json/", "json (stdlib)"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio"),
    ("prometheus_client/", "prometheus_client"),
    ("jose/", "python-jose"),
    ("cryptography/", "cryptography"),
    ("broker/", "broker"),
    ("sideband/", "sideband"),
    ("emulator/", "emulator"),
    ("bench/", "bench"),
)


def package_of(path: str) -> str:
    """Which package a frame's file belongs to (``stdlib:<module>`` for other stdlib files)."""
    normalized = path.replace("\\", "/")
    for pattern, name in _PACKAGES:
        if pattern in normalized:
            return name
    if "site-packages/" in normalized:
        return normalized.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in normalized or re.match(r"^[a-z_]+\.py$", normalized):
        return "stdlib:" + Path(normalized).stem
    return Path(normalized).parent.name or normalized


def _app_relative(path: str) -> str:
    normalized = path.replace("\\", "/")
    for package in APP_PACKAGES:
        index = normalized.rfind("/" + package)
        if index >= 0:
            return normalized[index + 1 :]
        if normalized.startswith(package):
            return normalized
    return normalized


def _short(path: str) -> str:
    """A frame's file as people read it: relative to site-packages, the stdlib or the repo."""
    normalized = path.replace("\\", "/")
    if "site-packages/" in normalized:
        return normalized.split("site-packages/", 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.*)$", normalized)
    if match:
        return match[1]
    return _app_relative(normalized) if _is_app(normalized) else normalized


def _is_app(path: str) -> bool:
    normalized = "/" + path.replace("\\", "/")
    return any("/" + package in normalized for package in APP_PACKAGES) and (
        "site-packages" not in normalized
    )


def _pyinstrument_session(path: Path) -> Any:
    # Imported by name: pyinstrument is the bench extra, absent from a dev/CI install (where
    # only the smoke runs, unprofiled), and this keeps mypy's view the same either way.
    return importlib.import_module("pyinstrument.session").Session.load(str(path))


def records_from_pyinstrument(path: Path) -> tuple[list[Record], dict[str, Any]]:
    """Samples of a saved pyinstrument session, and its duration and CPU time."""
    session = _pyinstrument_session(path)
    records: list[Record] = []
    for identifiers, weight in session.frame_records:
        stack = []
        for identifier in identifiers:
            function, _, rest = identifier.partition("\x00")
            file = rest.split("\x00", 1)[0]
            if file == "<thread>":
                continue
            stack.append((function, file))
        records.append((stack, weight))
    meta = {"duration_s": round(session.duration, 3), "cpu_s": round(session.cpu_time, 3)}
    return records, meta


_PYSPY_FRAME: Final = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def records_from_pyspy(path: Path) -> list[Record]:
    """Samples of ``py-spy record --format raw`` (collapsed stacks with counts)."""
    records: list[Record] = []
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack: list[Frame] = []
        for part in stack_text.split(";"):
            match = _PYSPY_FRAME.match(part)
            if part.startswith("thread (") or match is None:
                continue
            stack.append((match["function"], match["file"]))
        records.append((stack, float(count)))
    return records


@dataclass(frozen=True)
class ProfileSummary:
    """What dominates: shares of busy samples (0-100)."""

    busy_share: float
    packages: list[tuple[str, float]]
    functions: list[tuple[str, float]]
    app_inclusive: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "busy_percent": round(self.busy_share, 1),
            "packages": [{"package": p, "percent": round(v, 1)} for p, v in self.packages],
            "functions": [{"function": f, "percent": round(v, 1)} for f, v in self.functions],
            "broker_inclusive": [
                {"function": f, "percent": round(v, 1)} for f, v in self.app_inclusive
            ],
        }


def summarize(records: Iterable[Record]) -> ProfileSummary:
    """Shares of busy time by leaf package, leaf function and broker function (inclusive)."""
    packages: defaultdict[str, float] = defaultdict(float)
    functions: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    total = busy = 0.0
    for stack, weight in records:
        total += weight
        if not stack:
            continue
        function, file = stack[-1]
        # A C function (pyinstrument: "<built-in>") counts for the package that called it.
        owner = stack[-2][1] if file.startswith("<") and len(stack) > 1 else file
        package = package_of(owner)
        if package.startswith("idle"):
            continue
        busy += weight
        packages[package] += weight
        where = file if not file.startswith("<") else f"from {owner}"
        functions[f"{function} ({_short(where)})"] += weight
        seen: set[str] = set()
        for frame_function, frame_file in stack:
            if _is_app(frame_file) and not frame_file.endswith(_ENTRY_POINTS):
                name = f"{frame_function} ({_app_relative(frame_file)})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += weight
    if busy == 0:
        return ProfileSummary(0.0, [], [], [])

    def shares(weights: dict[str, float], n: int) -> list[tuple[str, float]]:
        top = sorted(weights.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [(name, 100 * weight / busy) for name, weight in top]

    return ProfileSummary(
        busy_share=100 * busy / total if total else 0.0,
        packages=shares(packages, 15),
        functions=shares(functions, TOP_FUNCTIONS),
        app_inclusive=shares(inclusive, TOP_FUNCTIONS),
    )


def render_summary(title: str, summary: ProfileSummary, notes: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    lines += list(notes)
    lines += [
        f"busy: {summary.busy_share:.1f}% of samples (the rest: the event loop idle in select)",
        "",
        "## Self time by package (% of busy samples)",
    ]
    lines += [f"{share:6.1f}%  {name}" for name, share in summary.packages]
    lines += ["", "## Functions with the most self time (% of busy samples)"]
    lines += [f"{share:6.1f}%  {name}" for name, share in summary.functions]
    lines += ["", "## Broker/sideband functions with the most inclusive time (% of busy samples)"]
    lines += [f"{share:6.1f}%  {name}" for name, share in summary.app_inclusive]
    return "\n".join(lines) + "\n"


def pyinstrument_tree(path: Path) -> str:
    """The pyinstrument call tree of a saved session, cut to :data:`TREE_LINES` lines."""
    renderers = importlib.import_module("pyinstrument.renderers")
    renderer = renderers.ConsoleRenderer(unicode=False, color=False, time="percent_of_total")
    text: str = renderer.render(_pyinstrument_session(path))
    lines = text.splitlines()
    if len(lines) > TREE_LINES:
        lines = [*lines[:TREE_LINES], f"... ({len(lines) - TREE_LINES} more lines)"]
    return "\n".join(lines) + "\n"


def sql_per_call(counts: dict[str, Any], calls: int | None) -> dict[str, Any]:
    """The window's SQL counts (:mod:`bench.profiled_broker`), and per call if ``calls``."""
    statements: dict[str, int] = counts.get("statements", {})
    total = sum(statements.values())
    out: dict[str, Any] = {"statements": total, "commits": counts.get("commits", 0)}
    if calls:
        out["calls"] = calls
        out["statements_per_call"] = round(total / calls, 1)
        out["commits_per_call"] = round(out["commits"] / calls, 1)
        out["by_kind_per_call"] = {
            kind: round(n / calls, 2) for kind, n in list(statements.items())[:20]
        }
    return out


def _render_sql(sql: dict[str, Any]) -> str:
    lines = [
        "",
        f"## SQL in the window: {sql['statements']} statements, {sql['commits']} commits",
    ]
    if "calls" in sql:
        lines[-1] += (
            f"; per tool call ({sql['calls']} calls): {sql['statements_per_call']} statements, "
            f"{sql['commits_per_call']} commits (idle sessions' upkeep included)"
        )
        lines += [f"{n:8.2f}  {kind}" for kind, n in sql["by_kind_per_call"].items()]
    return "\n".join(lines) + "\n"


def write_pyinstrument_profile(
    session_path: Path, out: Path, title: str, calls: int | None = None
) -> dict[str, Any]:
    """Summarize a saved pyinstrument session into ``out`` (text); the summary as JSON.

    ``calls``: how many tool calls (or offers) the window held, to count SQL per call.
    """
    records, meta = records_from_pyinstrument(session_path)
    summary = summarize(records)
    notes = [
        "sampler: pyinstrument, the broker's main thread (event loop), wall clock every 1 ms",
        f"window: {meta['duration_s']} s wall, {meta['cpu_s']} s CPU of the process",
        "",
    ]
    sql_path = session_path.with_suffix(".sql.json")
    sql = sql_per_call(json.loads(sql_path.read_text()), calls) if sql_path.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        render_summary(title, summary, notes)
        + (_render_sql(sql) if sql is not None else "")
        + "\n## Call tree (pyinstrument, % of the window)\n\n"
        + pyinstrument_tree(session_path)
    )
    result = {"profiler": "pyinstrument", "file": str(out), **meta, **summary.to_json()}
    if sql is not None:
        result["sql"] = sql
    return result


def write_pyspy_profile(raw_path: Path, out: Path, title: str) -> dict[str, Any]:
    """Summarize a py-spy raw profile into ``out`` (text); the summary as JSON."""
    summary = summarize(records_from_pyspy(raw_path))
    notes = [
        "sampler: py-spy, every thread of the broker process, only while running (on CPU)",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_summary(title, summary, notes))
    return {"profiler": "py-spy", "file": str(out), **summary.to_json()}


class PySpyRecorder:
    """``py-spy record`` of one process for a bounded time, started and awaited."""

    def __init__(self, pid: int, raw_out: Path, duration_s: int, rate: int = 250) -> None:
        self._pid = pid
        self._raw_out = raw_out
        self._duration = max(1, int(duration_s))
        self._rate = rate
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start sampling.

        Raises:
            RuntimeError: py-spy is not installed (``pip install -e '.[bench]'``).
        """
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        self._raw_out.parent.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(self._pid),
            "--duration",
            str(self._duration),
            "--rate",
            str(self._rate),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(self._raw_out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    def interrupt(self) -> None:
        """End the recording early (py-spy writes what it has on SIGINT)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGINT)

    async def wait(self) -> Path:
        """Wait for the recording to end (bounded by its duration plus a margin)."""
        assert self._process is not None, "start() first"
        try:
            async with asyncio.timeout(self._duration + 30):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        return self._raw_out


class BrokerProfiler:
    """Profiles a broker process over windows the benchmark chooses.

    Args:
        mode: ``"pyinstrument"`` (the broker must run under :mod:`bench.profiled_broker`),
            ``"py-spy"``, or ``None`` (every call is a no-op).
        pid: the broker's process id.
        control: ``(start, stop)`` of the pyinstrument broker: send the start signal, and
            stop and return the saved session's path.
        profiles_dir: where the ``<name>.txt`` summaries go.
        work_dir: where raw profiles go.
    """

    def __init__(
        self,
        mode: str | None,
        pid: int,
        profiles_dir: Path,
        work_dir: Path,
        control: tuple[Any, Any] | None = None,
    ) -> None:
        self.mode = mode
        self._pid = pid
        self._profiles_dir = profiles_dir
        self._work_dir = work_dir
        self._control = control
        self._spy: PySpyRecorder | None = None
        self._raw: Path | None = None

    async def start(self, name: str, max_seconds: float) -> None:
        """Start a window (py-spy stops by itself after ``max_seconds``)."""
        if self.mode == "pyinstrument":
            assert self._control is not None
            self._control[0]()
        elif self.mode == "py-spy":
            self._raw = self._work_dir / f"{name}.pyspy.txt"
            self._spy = PySpyRecorder(self._pid, self._raw, int(max_seconds) + 1)
            await self._spy.start()

    async def stop(self, name: str, title: str, calls: int | None = None) -> dict[str, Any] | None:
        """End the window; write ``<profiles_dir>/<name>.txt``; its summary (or ``None``).

        ``calls``: the tool calls (or offers) in the window, for the SQL counts per call.
        """
        out = self._profiles_dir / f"{name}.txt"
        if self.mode == "pyinstrument":
            assert self._control is not None
            session_path: Path = await self._control[1]()
            return write_pyinstrument_profile(session_path, out, title, calls)
        if self.mode == "py-spy" and self._spy is not None:
            self._spy.interrupt()
            raw = await self._spy.wait()
            self._spy = None
            if not raw.exists():
                return None
            return write_pyspy_profile(raw, out, title)
        return None
