"""Where a benchmark writes, how it is profiled, and the envelope of its JSON result."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from .databases import DatabaseKind
from .stack import ROOT
from .stats import machine_info, now_iso, write_result

BENCH_DIR: Final = ROOT / "bench"
DEFAULT_OUT: Final = BENCH_DIR / "results"
DEFAULT_WORK: Final = BENCH_DIR / ".work"
DEFAULT_PROFILES: Final = BENCH_DIR / "profiles"
PROFILERS: Final = ("pyinstrument", "py-spy")


@dataclass(frozen=True)
class BenchContext:
    """Directories and switches shared by every benchmark of one run.

    Attributes:
        out_dir: the JSON results (``<benchmark>.json``).
        work_dir: broker logs, SQLite files and raw profiles (not committed).
        profiles_dir: profile summaries (``<benchmark>-<window>.txt``).
        profile: ``"pyinstrument"``, ``"py-spy"`` or ``None``.
        db: the broker's database for the broker benchmarks.
        preset: the size preset the options came from.
        command: the command line, as RESULTS.md quotes it.
    """

    out_dir: Path = DEFAULT_OUT
    work_dir: Path = DEFAULT_WORK
    profiles_dir: Path = DEFAULT_PROFILES
    profile: str | None = None
    db: DatabaseKind = "sqlite"
    preset: str = "full"
    command: str = ""


def add_common_args(parser: argparse.ArgumentParser, presets: Iterable[str]) -> None:
    parser.add_argument("--preset", choices=list(presets), default="full", help="sizes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results directory")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="logs and scratch files")
    parser.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="pyinstrument",
        choices=PROFILERS,
        default=None,
        help="profile the broker in an extra window (pyinstrument if no value)",
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")


def invocation() -> str:
    """How this run was started, as a reader would type it (``BENCH_VIA`` names a wrapper)."""
    argv = list(sys.argv)
    script = Path(argv[0]) if argv else Path()
    if script.parent.name == "bench" and script.parent.parent == ROOT:
        module = "bench" if script.stem == "__main__" else f"bench.{script.stem}"
        argv = ["python", "-m", module, *argv[1:]]
    else:
        argv = [Path(sys.executable).name, *argv]
    command = " ".join(shlex.quote(a) for a in argv)
    via = os.environ.get("BENCH_VIA")
    return f"{via} ({command})" if via else command


def context_from_args(args: argparse.Namespace) -> BenchContext:
    return BenchContext(
        out_dir=args.out,
        work_dir=args.work,
        profiles_dir=args.profiles,
        profile=args.profile,
        db=cast(DatabaseKind, args.db),
        preset=args.preset,
        command=invocation(),
    )


def override(options: Any, args: argparse.Namespace, fields: Sequence[str]) -> Any:
    """``options`` with every field in ``fields`` that was given on the command line."""
    changes = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    return dataclasses.replace(options, **changes)


@dataclass(frozen=True)
class Started:
    """When a benchmark started, and the machine as it was then (load average included)."""

    wall: str
    monotonic: float
    machine: dict[str, Any]


def start_clock() -> Started:
    return Started(now_iso(), time.monotonic(), machine_info())


def finish(
    name: str, ctx: BenchContext, options: Any, started: Started, results: dict[str, Any]
) -> dict[str, Any]:
    """The benchmark's JSON: what ran, where, when, how long, and its results; written."""
    payload = {
        "benchmark": name,
        "command": ctx.command,
        "preset": ctx.preset,
        "started_at": started.wall,
        "duration_s": round(time.monotonic() - started.monotonic, 1),
        "machine": started.machine,
        "options": dataclasses.asdict(options),
        "database": ctx.db,
        "results": results,
    }
    write_result(ctx.out_dir, name, payload)
    return payload
