"""The talking benchmark's overload phase (issue 16): the brake at the real knee.

Run once per database after its stepping (:mod:`bench.talking`), against a fresh broker
whose ``BROKER_MAX_LIVE_CALLS`` is the ceiling: the knee if the stepping found one, else its
largest unsaturated step, else its first. The other readings of the brake (event-loop lag,
the event-log backlog) are at their shipped defaults, not off as in the stepping.

1. *Grow*: talking calls are opened up to the ceiling (a 503 ``overloaded`` on the way, a
   lagging loop say, is retried after its ``Retry-After``, as a client should). A few
   sessions are created first and left unoffered: they are offered at the ceiling.
2. *Press*: for ``overload_window_s``, while the calls talk and call the tool, new sessions
   (a quarter of the ceiling, bounded), the waiting sessions' offers and ``/readyz`` are
   tried, paced over the window (the per-session offer rate is off in this phase: the same
   sessions are offered again and again). Every answer must be 503 ``overloaded`` with reason
   ``live_calls`` and a ``Retry-After``; each is tallied by status, code and reason.
3. *Recover*: the calls go quiet (the function calls under way are answered), a tenth of
   them is hung up (``POST /api/v1/sessions/{id}/hangup``); ``/readyz`` is timed back to
   200; as many calls are opened again (the waiting sessions' offers, then new sessions)
   and their sidebands must attach; one more session must be refused (the ceiling holds).
4. *Books*: after the calls opened again have talked, every function call the stand-in
   issued was answered exactly once and recorded as succeeded; every ``response.done`` it
   sent was counted (``broker_responses_total``) and stored (the sessions' ``usage``); no
   sideband failed, no session was degraded, no answer was a 500, and the broker's log
   holds no error.

Every loop is bounded in count and in time (``Options.overload_*``, ``recovery_max_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from broker.settings.model import Settings

from .context import BenchContext
from .databases import DatabaseKind, scratch_database
from .probe import SIDEBAND_ONLY_OFFER
from .stack import (
    ADMIN_KEY,
    NOOP_TOOL,
    BrokerApi,
    CreatedSession,
    read_metrics,
    start_broker,
)
from .stats import summarize_ms

if TYPE_CHECKING:
    from .talking import Helper, Options

NAME: Final = "talking"
"""The work directory it shares with :mod:`bench.talking`."""

Settle = Callable[[], Awaitable[dict[str, Any]]]
"""Pause the stand-in's turns and wait for the function calls under way: the books."""


# ---- the overload phase ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One answer of the broker as the overload phase tallies it (``status`` 0: no answer)."""

    status: int
    code: str | None = None
    reason: str | None = None
    retry_after: str | None = None
    session: CreatedSession | None = None

    @property
    def overloaded(self) -> bool:
        return self.status == 503 and self.code == "overloaded"

    def refused_at_ceiling(self) -> bool:
        """The refusal the ceiling must give: 503 ``overloaded``, ``live_calls``, Retry-After."""
        return (
            self.overloaded
            and self.reason == "live_calls"
            and self.retry_after is not None
            and self.retry_after.isdigit()
            and int(self.retry_after) >= 1
        )

    @property
    def label(self) -> str:
        """Its tally key: ``201``, ``503 overloaded live_calls``, ``0 ClientOSError``."""
        return " ".join(str(p) for p in (self.status, self.code, self.reason) if p is not None)

    def retry_after_s(self) -> float:
        with contextlib.suppress(TypeError, ValueError):
            return min(float(self.retry_after or 1), OVERLOAD_MAX_RETRY_WAIT_S)
        return 1.0


OVERLOAD_MAX_RETRIES: Final = 5
OVERLOAD_MAX_RETRY_WAIT_S: Final = 10.0
OVERLOAD_WORKERS: Final = 4
OVERLOAD_GRACE_S: Final = 30.0
"""How long the overload window's requests may run past the window before they are cut."""
READY_POLL_S: Final = 0.05
LOG_PROBLEMS: Final = (
    "internal_error",
    "unhandled error",
    "sideband supervisor failed",
    "could not record",
    "could not write",
    "could not mark",
    "writer failed",
)
"""Broker log messages that mean a request, a supervisor or a record failed."""


class Tally:
    """Replies counted by :attr:`Reply.label`, per kind of request."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.retry_after: set[str] = set()

    def add(self, kind: str, reply: Reply) -> Reply:
        by_label = self.counts.setdefault(kind, {})
        by_label[reply.label] = by_label.get(reply.label, 0) + 1
        if reply.retry_after is not None:
            self.retry_after.add(reply.retry_after)
        return reply

    def total(self, kind: str) -> int:
        return sum(self.counts.get(kind, {}).values())

    def with_status(self, status: int) -> int:
        return sum(
            n
            for by_label in self.counts.values()
            for label, n in by_label.items()
            if label.split(" ", 1)[0] == str(status)
        )


async def _send(
    api: BrokerApi,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    sdp: str | None = None,
    token: str = ADMIN_KEY,
) -> tuple[Reply, Any]:
    """One request; its :class:`Reply` and its JSON body (``None`` if it has none)."""
    headers = {"Authorization": f"Bearer {token}"}
    if sdp is not None:
        headers["Content-Type"] = "application/sdp"
    try:
        async with api.http.request(
            method,
            api.base_url + path,
            headers=headers,
            json=body if sdp is None else None,
            data=sdp,
        ) as resp:
            status, text = resp.status, await resp.text()
            retry_after = resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Reply(0, type(exc).__name__), None
    data: Any = None
    with contextlib.suppress(ValueError):
        data = json.loads(text)
    problem = data if isinstance(data, dict) and status >= 400 else {}
    return Reply(status, problem.get("code"), problem.get("reason"), retry_after), data


async def _create(api: BrokerApi, label: str) -> Reply:
    body = {"tools": [NOOP_TOOL], "sideband": True, "instructions": f"bench overload {label}"}
    reply, data = await _send(api, "POST", "/api/v1/sessions", body=body)
    if reply.status == 201 and isinstance(data, dict):
        session = CreatedSession(data["id"], data["client_secret"]["value"])
        return dataclasses.replace(reply, session=session)
    return reply


async def _offer(api: BrokerApi, session: CreatedSession) -> Reply:
    path = f"/api/v1/sessions/{session.session_id}/realtime-offer"
    reply, _ = await _send(api, "POST", path, sdp=SIDEBAND_ONLY_OFFER, token=session.client_secret)
    return reply


async def _ready(api: BrokerApi) -> Reply:
    reply, _ = await _send(api, "GET", "/readyz")
    return reply


async def _retrying(
    request: Callable[[], Awaitable[Reply]], tally: Tally, kind: str, deadline: float
) -> Reply:
    """Send ``request`` until it is not refused for load.

    After each refusal's Retry-After, as a client should; at most
    :data:`OVERLOAD_MAX_RETRIES` times, never past ``deadline``.
    """
    reply = tally.add(kind, await request())
    for _ in range(OVERLOAD_MAX_RETRIES):
        if not reply.overloaded or time.monotonic() + reply.retry_after_s() > deadline:
            break
        await asyncio.sleep(reply.retry_after_s())
        reply = tally.add(kind, await request())
    return reply


async def _open(
    api: BrokerApi,
    tally: Tally,
    label: str,
    deadline: float,
    session: CreatedSession | None = None,
) -> CreatedSession | None:
    """Create (unless given) and offer a session, honouring Retry-After; the opened one."""
    if session is None:
        created = await _retrying(lambda: _create(api, label), tally, "create", deadline)
        session = created.session
        if session is None:
            return None
    assert session is not None
    offered = await _retrying(lambda: _offer(api, session), tally, "offer", deadline)
    return session if offered.status == 201 else None


async def _open_many(
    api: BrokerApi, count: int, tally: Tally, *, concurrency: int, deadline: float, prefix: str
) -> list[str]:
    """Open ``count`` sessions (:func:`_open`), ``concurrency`` at a time; their ids."""
    opened: list[str] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for n in remaining:
            if time.monotonic() > deadline:
                return
            session = await _open(api, tally, f"{prefix} {n}", deadline)
            if session is not None:
                opened.append(session.session_id)

    async with asyncio.TaskGroup() as tasks:
        for i in range(max(1, min(concurrency, count))):
            tasks.create_task(worker(), name=f"bench-overload-open-{i}")
    return opened


def overload_ceiling(
    steps: Sequence[dict[str, Any]], knee_calls: int | None, cap: int | None
) -> tuple[int, str] | None:
    """The ceiling the overload phase sets, and where it comes from (``None``: no usable size).

    The knee; else the largest unsaturated step; else the first step; at most ``cap``.
    """
    sizes = [s["calls"] for s in steps if s["calls"] > 0]
    if not sizes:
        return None
    unsaturated = [s["calls"] for s in steps if s["calls"] > 0 and not s["saturated"]]
    if knee_calls:
        ceiling, source = knee_calls, "the knee"
    elif unsaturated:
        ceiling, source = max(unsaturated), "the largest unsaturated step"
    else:
        ceiling, source = sizes[0], "the first step"
    if cap is not None and ceiling > cap:
        return cap, f"{source} ({ceiling:,}), capped at {cap} by the preset"
    return ceiling, source


def metric_by_label(text: str | None, name: str) -> dict[str, float]:
    """``name``'s samples keyed by their labels as written (``""``: unlabelled)."""
    values: dict[str, float] = {}
    for line in (text or "").splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        name_labels, _, value = line.rpartition(" ")
        labels = name_labels[len(name) :].strip("{}")
        with contextlib.suppress(ValueError):
            values[labels] = float(value)
    return values


def metric_total(text: str | None, name: str) -> float:
    return sum(metric_by_label(text, name).values())


def log_problems(path: Path) -> dict[str, Any]:
    """Error lines of a broker's JSON log, and those naming a failed request or record."""
    errors = 0
    flagged: list[str] = []
    try:
        handle = path.open(errors="replace")
    except OSError:
        return {"errors": None, "flagged": 0, "samples": []}
    with handle:
        for line in handle:
            if '"level": "error"' in line or '"level": "critical"' in line:
                errors += 1
            if any(p in line for p in LOG_PROBLEMS):
                flagged.append(line.strip()[:300])
    return {"errors": errors, "flagged": len(flagged), "samples": flagged[:3]}


async def _list_sessions(api: BrokerApi, max_pages: int) -> list[dict[str, Any]] | None:
    """Every session (``GET /api/v1/sessions``, 200 a page, at most ``max_pages``)."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(max_pages):
        path = "/api/v1/sessions?limit=200" + (f"&cursor={cursor}" if cursor else "")
        reply, data = await _send(api, "GET", path)
        if reply.status != 200 or not isinstance(data, dict):
            return None
        rows += data["sessions"]
        cursor = data.get("next_cursor")
        if not cursor:
            return rows
    return None


async def overload_phase(
    options: Options,
    ctx: BenchContext,
    db: DatabaseKind,
    standin: Helper,
    stepping: dict[str, Any],
    settle: Settle,
) -> dict[str, Any]:
    """The phase for one database after its ``stepping`` (the broker phase's result).

    Never raises for what it finds: a failure is its ``problems`` (and ``ok`` false).
    """
    picked = overload_ceiling(
        stepping.get("steps", []), stepping.get("knee"), options.overload_ceiling_max
    )
    if picked is None:
        return {"skipped": "the stepping found no usable size"}
    ceiling, source = picked
    defaults = Settings.model_fields
    brake = {
        "BROKER_MAX_LIVE_CALLS": str(ceiling),
        # The stepping switches the other readings off; here the brake runs as shipped, so a
        # lagging loop refuses too (and is retried after its Retry-After).
        "BROKER_OVERLOAD_LOOP_LAG_S": str(defaults["overload_loop_lag_s"].default),
        "BROKER_EVENT_LOG_MAX_PENDING": str(defaults["event_log_max_pending"].default),
        "BROKER_OVERLOAD_EVENT_LOG_LAG_S": str(defaults["overload_event_log_lag_s"].default),
    }
    result: dict[str, Any] = {
        "ceiling": ceiling,
        "ceiling_from": source,
        "brake": {k.removeprefix("BROKER_").lower(): v for k, v in brake.items()},
    }
    started = time.monotonic()
    work = ctx.work_dir / NAME
    try:
        async with scratch_database(db, work) as db_url:
            broker = await start_broker(
                work,
                provider_base_url=standin.base_url + "/v1",
                database_url=db_url,
                name=f"broker-{db}-overload",
                cpu=options.broker_cpu,
                # The press offers the same few waiting sessions many times: the per-session
                # offer brake (its own tests) would answer them 429 before the ceiling did.
                extra_env=brake | {"BROKER_OFFER_RATE": "0"},
            )
            result["log"] = str(broker.log)
            api = BrokerApi(broker.base_url, connections=options.setup_concurrency + 8)
            try:
                result |= await _overload_run(
                    options, api, standin, ceiling, started + options.overload_max_s, settle
                )
            finally:
                await api.close()
                await broker.stop()
                with contextlib.suppress(Exception):
                    await standin.post("/_standin/calls/end", {"all": True})
        result["log_problems"] = log_problems(broker.log)
    except Exception as exc:  # reported as the phase's problem: the run goes on
        result["failed"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    result["s"] = round(time.monotonic() - started, 1)
    result["problems"] = overload_problems(result)
    result["ok"] = not result["problems"]
    return result


class _Sent:
    """The stand-in's ``response.done`` count over a phase (its window counters, summed)."""

    def __init__(self, standin: Helper) -> None:
        self.standin = standin
        self.responses = 0

    async def start(self) -> None:
        """Start counting (what the window held before is an earlier phase's)."""
        await self.standin.get("/_standin/stats?reset=1")

    async def read(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.standin.get("/_standin/stats?reset=1")
        self.responses += int(stats["responses"])
        return stats


async def _overload_run(
    options: Options,
    api: BrokerApi,
    standin: Helper,
    ceiling: int,
    deadline: float,
    settle: Settle,
) -> dict[str, Any]:
    """Grow, press, recover, settle and check the books (the module docstring's steps)."""
    metrics_before = await read_metrics(api)
    await standin.get("/_standin/books?reset=1")
    sent = _Sent(standin)
    await sent.start()
    await standin.post("/_standin/resume")
    hangups = min(ceiling, max(2, round(ceiling * options.overload_hangup_share)))
    grow = Tally()
    # Created below the ceiling; offered at it (refused), and again once it has recovered.
    waiting: list[CreatedSession] = []
    for n in range(max(1, min(hangups // 2, 5))):
        reply = grow.add("create", await _create(api, f"waiting {n}"))
        if reply.session is not None:
            waiting.append(reply.session)
    started = time.monotonic()
    opened = await _open_many(
        api,
        ceiling,
        grow,
        concurrency=options.setup_concurrency,
        deadline=min(deadline, started + options.setup_max_s),
        prefix="grow",
    )
    tallies = {"grow": grow}
    result: dict[str, Any] = {
        "grow": {"s": round(time.monotonic() - started, 1), "opened": len(opened)},
        "reached": len(opened) >= ceiling,
        "waiting_sessions": len(waiting),
    }
    if result["reached"]:
        await asyncio.sleep(options.warmup_s)
        await sent.read()
        press = Tally()
        tallies["press"] = press
        result["press"] = await _press(options, api, press, waiting, ceiling)
        result["press"]["talk"] = _talk_summary(await sent.read())
        # The load drops: a share of the calls is hung up, the calls quiet meanwhile (a hangup
        # must not cut a function call off before its output: that is no broker's loss).
        result["books_at_ceiling"] = await settle()
        recovery = Tally()
        tallies["recovery"] = recovery
        result["recovery"] = await _recover(
            options, api, recovery, opened[:hangups], waiting, deadline
        )
        again = recovery.add("create again", await _create(api, "over again"))
        result["ceiling_holds_again"] = again.refused_at_ceiling()
        await standin.post("/_standin/resume")
        await asyncio.sleep(options.warmup_s)  # the calls opened again talk too
    result["books"] = await settle()
    await sent.read()
    result["replies"] = {stage: t.counts for stage, t in tallies.items()}
    press_tally = tallies.get("press")
    result["retry_after_seen"] = sorted(press_tally.retry_after) if press_tally else []
    result["status_500"] = sum(t.with_status(500) for t in tallies.values())
    result |= await _record_books(options, api, sent.responses, result["books"], metrics_before)
    return result


def _talk_summary(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "events_sent": stats["events_sent"],
        "function_calls": stats["function_calls"],
        "outputs": stats["outputs"],
        "dispatch_ms": summarize_ms([float(s) for s in stats["dispatch_s"]]),
    }


async def _press(
    options: Options, api: BrokerApi, tally: Tally, waiting: list[CreatedSession], ceiling: int
) -> dict[str, Any]:
    """Try new sessions, offers and ``/readyz`` at the ceiling for ``overload_window_s``.

    The waiting sessions' offers are tried too; the tries are paced over the window by
    :data:`OVERLOAD_WORKERS` workers while the calls talk.
    """
    attempts = min(
        options.overload_max_attempts,
        max(options.overload_min_attempts, math.ceil(ceiling * options.overload_extra_share)),
    )
    window = options.overload_window_s
    began = time.monotonic()
    slots = iter(range(attempts))
    proper = improper = 0
    improper_samples: list[str] = []

    def judge(reply: Reply) -> None:
        nonlocal proper, improper
        if reply.refused_at_ceiling():
            proper += 1
            return
        improper += 1
        if len(improper_samples) < 5:
            improper_samples.append(f"{reply.label} (Retry-After {reply.retry_after})")

    async def worker() -> None:
        for n in slots:
            await asyncio.sleep(max(0.0, began + n * window / attempts - time.monotonic()))
            created = tally.add("create", await _create(api, f"over {n}"))
            judge(created)
            if created.session is not None:  # let in over the ceiling: its offer is judged too
                judge(tally.add("offer", await _offer(api, created.session)))
            if waiting:
                judge(tally.add("offer", await _offer(api, waiting[n % len(waiting)])))
            judge(tally.add("readyz", await _ready(api)))

    cut_short = False
    try:
        async with asyncio.timeout(window + OVERLOAD_GRACE_S):
            async with asyncio.TaskGroup() as tasks:
                for i in range(min(OVERLOAD_WORKERS, attempts)):
                    tasks.create_task(worker(), name=f"bench-overload-press-{i}")
    except TimeoutError:
        cut_short = True
    return {
        "s": round(time.monotonic() - began, 1),
        "cut_short": cut_short,
        "sessions_tried": tally.total("create"),
        "offers_tried": tally.total("offer"),
        "readyz_polled": tally.total("readyz"),
        "refused_properly": proper,
        "not_refused_properly": improper,
        "not_refused_samples": improper_samples,
    }


async def _recover(
    options: Options,
    api: BrokerApi,
    tally: Tally,
    hang_up: Sequence[str],
    waiting: Sequence[CreatedSession],
    deadline: float,
) -> dict[str, Any]:
    """Hang ``hang_up`` up; time ``/readyz`` back to 200; open as many calls again.

    The waiting sessions' offers first, then new sessions; their sidebands must attach.
    """
    gate = asyncio.Semaphore(16)

    async def hang(session_id: str) -> None:
        async with gate:
            path = f"/api/v1/sessions/{session_id}/hangup"
            reply, _ = await _send(api, "POST", path, body={"reason": "bench: the load drops"})
            tally.add("hangup", reply)

    await asyncio.gather(*(hang(s) for s in hang_up))
    dropped = time.monotonic()
    bound = dropped + options.recovery_max_s
    ready_after_s: float | None = None
    for _ in range(int(options.recovery_max_s / READY_POLL_S) + 1):
        if time.monotonic() > bound:
            break
        if (await _ready(api)).status == 200:
            ready_after_s = round(time.monotonic() - dropped, 3)
            break
        await asyncio.sleep(READY_POLL_S)
    fresh = max(0, len(hang_up) - len(waiting))
    until = min(bound, deadline) if ready_after_s is not None else dropped
    reopened = [
        s
        for s in await asyncio.gather(
            *(_open(api, tally, "again", until, session=w) for w in waiting),
            *(_open(api, tally, f"again {n}", until) for n in range(fresh)),
        )
        if s is not None
    ]
    opened_after_s = round(time.monotonic() - dropped, 3)
    attached = await _wait_attached(api, [s.session_id for s in reopened], bound)
    return {
        "hung_up": len(hang_up),
        "ready_after_s": ready_after_s,
        "expected": len(waiting) + fresh,
        "reopened": len(reopened),
        "reopened_after_s": opened_after_s,
        "attached": attached,
        "attached_after_s": round(time.monotonic() - dropped, 3),
    }


async def _wait_attached(api: BrokerApi, session_ids: Sequence[str], bound: float) -> int:
    """How many of the sessions are live with their sideband connected by ``bound``."""
    waiting = set(session_ids)
    for _ in range(1000):
        for session_id in list(waiting):
            reply, data = await _send(api, "GET", f"/api/v1/sessions/{session_id}")
            if (
                reply.status == 200
                and data["state"] == "live"
                and data["sideband"]["state"] == "connected"
            ):
                waiting.discard(session_id)
        if not waiting or time.monotonic() > bound:
            break
        await asyncio.sleep(0.1)
    return len(session_ids) - len(waiting)


async def _record_books(
    options: Options,
    api: BrokerApi,
    responses_sent: int,
    books: dict[str, Any],
    metrics_before: str | None,
) -> dict[str, Any]:
    """What the broker recorded, against what the stand-in sent.

    ``response.done`` counted (``broker_responses_total``) and stored (each session's
    ``usage.responses``), tool calls recorded, session and sideband states, failure and
    refusal metrics.

    Usage is folded into session rows lazily: read until it matches, within ``drain_max_s``.
    """
    bound = time.monotonic() + options.drain_max_s
    rows: list[dict[str, Any]] | None = None
    metrics: str | None = None
    for _ in range(200):
        metrics = await read_metrics(api)
        rows = await _list_sessions(api, max_pages=100)
        counted = metric_total(metrics, "broker_responses_total")
        stored = sum(r["usage"]["responses"] for r in rows or [])
        if (counted == stored == responses_sent) or time.monotonic() > bound:
            break
        await asyncio.sleep(0.25)
    rows = rows or []
    states: dict[str, int] = {}
    sidebands: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
        side = row["sideband"]["state"]
        sidebands[side] = sidebands.get(side, 0) + 1
    counted = int(metric_total(metrics, "broker_responses_total"))
    stored = sum(int(r["usage"]["responses"]) for r in rows)
    recorded = sum(int(r["tool_calls"]["total"]) for r in rows)
    succeeded = sum(int(r["tool_calls"].get("succeeded", 0)) for r in rows)

    def moved(name: str) -> float:
        return metric_total(metrics, name) - metric_total(metrics_before, name)

    return {
        "usage": {
            "responses_sent": responses_sent,
            "broker_responses_total": counted,
            "stored_responses": stored,
            "exact": counted == stored == responses_sent,
        },
        "tool_calls_recorded": {
            "issued": books["function_calls"],
            "recorded": recorded,
            "succeeded": succeeded,
            "exact": recorded == succeeded == books["function_calls"],
        },
        "sessions": {"listed": len(rows), "states": states, "sideband": sidebands},
        "metrics": {
            "sideband_failures": moved("broker_sideband_failures_total"),
            "sessions_degraded": moved("broker_sessions_degraded_total"),
            "refusals": metric_by_label(metrics, "broker_overload_refusals_total"),
            "events_dropped": metric_by_label(metrics, "broker_events_dropped_total"),
            "overloaded_at_end": metric_total(metrics, "broker_overloaded"),
        },
    }


def overload_problems(r: dict[str, Any]) -> list[str]:
    """Every way the overload phase fell short of the issue's overload target ([]: none)."""
    problems: list[str] = []
    if "failed" in r:
        return [f"the phase failed: {r['failed']}"]
    if not r.get("reached"):
        opened = r.get("grow", {}).get("opened")
        return [f"the calls never reached the ceiling ({opened} of {r.get('ceiling')} opened)"]
    press, recovery = r["press"], r["recovery"]
    if r["status_500"]:
        problems.append(f"{r['status_500']} answers were 500")
    if press["cut_short"]:
        problems.append("the window's requests did not finish within its bound")
    if not press["refused_properly"] or press["not_refused_properly"]:
        problems.append(
            f"{press['not_refused_properly']} answers at the ceiling were not 503 overloaded "
            f"live_calls with Retry-After ({press['refused_properly']} were): "
            + "; ".join(press["not_refused_samples"])
        )
    if recovery["ready_after_s"] is None:
        problems.append("/readyz was not 200 again within the recovery bound")
    if recovery["reopened"] < recovery["expected"] or recovery["attached"] < recovery["expected"]:
        problems.append(
            f"after the load dropped {recovery['reopened']} of {recovery['expected']} calls "
            f"opened again ({recovery['attached']} with their sideband attached)"
        )
    if not r["ceiling_holds_again"]:
        problems.append("back at the ceiling, a new session was not refused")
    for name in ("books_at_ceiling", "books"):
        books = r[name]
        if not books["exact"] or books["unanswered_at_end"]:
            problems.append(f"function calls ({name}): not each answered exactly once: {books}")
    if not r["usage"]["exact"]:
        problems.append(f"usage not exact: {r['usage']}")
    if not r["tool_calls_recorded"]["exact"]:
        problems.append(f"tool calls not recorded exactly: {r['tool_calls_recorded']}")
    bad_states = {k: v for k, v in r["sessions"]["states"].items() if k in ("degraded", "failed")}
    if bad_states or r["sessions"]["sideband"].get("failed"):
        problems.append(f"sessions degraded or failed: {r['sessions']}")
    metrics = r["metrics"]
    if metrics["sideband_failures"] or metrics["sessions_degraded"]:
        problems.append(
            f"sideband failures {metrics['sideband_failures']:g}, "
            f"degraded sessions {metrics['sessions_degraded']:g}"
        )
    log = r.get("log_problems", {})
    if log.get("flagged") or log.get("errors"):
        problems.append(
            f"the broker logged {log.get('errors')} errors, {log.get('flagged')} failed requests "
            "or records: " + " | ".join(log.get("samples", []))
        )
    return problems


def phase_bound_s(options: Options) -> float:
    """The most one overload phase can take: the sum of its steps' bounds."""
    return (
        options.overload_max_s
        + 2 * options.warmup_s
        + options.overload_window_s
        + OVERLOAD_GRACE_S
        + 3 * options.drain_max_s
        + 2 * options.recovery_max_s
        + 120  # broker start and stop, database set-up
    )
