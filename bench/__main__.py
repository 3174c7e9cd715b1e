"""``python -m bench``: run the benchmarks, then write RESULTS.md and the plot.

``make bench`` runs ``python -m bench --profile`` (the full sizes, about twenty minutes on
two cores). ``--preset medium`` runs smaller sizes (a few minutes), ``--preset smoke`` tiny
ones (what ``tests/bench`` runs); ``--only`` picks benchmarks. A benchmark that fails is
reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Final

from . import (
    audit_append,
    capacity,
    dispatch_latency,
    instances,
    offer_overhead,
    talking,
    trusted,
)
from .context import add_common_args, context_from_args
from .report import DEFAULT_PLOT, DEFAULT_RESULTS_MD, write_report

MODULES: Final[dict[str, Any]] = {
    "offer_overhead": offer_overhead,
    "dispatch_latency": dispatch_latency,
    "capacity": capacity,
    "audit_append": audit_append,
    "talking": talking,
    "instances": instances,
    "trusted": trusted,
}


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_common_args(parser, ["full", "medium", "smoke"])
    parser.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(MODULES),
        help="comma-separated: " + ",".join(MODULES),
    )
    parser.add_argument("--results-md", type=Path, default=DEFAULT_RESULTS_MD)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    ctx = context_from_args(args)
    if ctx.profile is not None:
        # Only this run's profiles are cited: drop what the benchmarks about to run wrote
        # last time (another benchmark's profile stays with its results).
        for name in args.only:
            for profile in MODULES[name].PROFILES:
                (ctx.profiles_dir / f"{profile}.txt").unlink(missing_ok=True)
    for name in args.only:
        # A benchmark that fails this time must not be reported with an earlier run's numbers.
        (ctx.out_dir / f"{name}.json").unlink(missing_ok=True)
    failed: list[str] = []
    started = time.monotonic()
    for name in args.only:
        module = MODULES[name]
        _say(f"bench: {name} ({args.preset}) ...")
        began = time.monotonic()
        try:
            asyncio.run(module.run(module.PRESETS[args.preset], ctx))
        except Exception:
            failed.append(name)
            _say(f"bench: {name} FAILED\n{traceback.format_exc()}")
            continue
        _say(f"bench: {name} done in {time.monotonic() - began:.0f} s")
    note = f"Failed in this run (see its output): {', '.join(failed)}." if failed else ""
    try:
        md, plot = write_report(ctx.out_dir, args.results_md, args.plot, note)
    except FileNotFoundError as exc:
        _say(f"bench: no report: {exc}")
        return 1
    wrote = f"{md} and {plot}" if plot else str(md)
    _say(f"bench: wrote {wrote}; {time.monotonic() - started:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
