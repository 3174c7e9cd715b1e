"""Webhooks for billing and ops: a ``session.ended`` event per session, signed, retried.

**Once per end.** A session ends by moving into ``ended`` or ``failed``, and every path that
ends one (the sideband supervisor, the duration backstop, an operator's hangup, a failed
offer) makes that move with :func:`broker.session.ending.end_session`, which can succeed
once per session (nothing leaves those states). In the same transaction it queues a
``webhook_deliveries`` row (the outbox), unique per ``(session_id, type)``: no end goes
unannounced, none is announced twice, and a crash right after the end loses nothing.
Sessions are marked for it (``notify_ended``) when they are created with webhooks
configured, so a session's end is announced even if another broker process ends it.

**At least once on the wire.** :class:`WebhookSender` (one per broker process with
``BROKER_WEBHOOK_URL`` set) polls the outbox and posts each due row: claimed by a
conditional update (two brokers never send one row at once), its attempt counted and the
row leased before the POST. Connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and jitter (a ``Retry-After`` is honoured up to the backoff cap); any
other answer but 2xx fails the delivery at once, as does the last of ``max_attempts``. A
broker that stops or dies mid-attempt leaves the row pending: the next sender (this one
restarted, or another replica) retries it. An HTTP delivery cannot be exactly once (the
receiver may have acted when the broker dies before reading its 2xx), so every attempt of
one event carries the same ``Webhook-Id`` and byte-identical body: receivers drop repeats.

The body is rendered at the first attempt (the session's final usage and tool-call counts)
and stored, so every retry signs and sends the same bytes (:mod:`broker.webhooks.signature`).

**A checkpoint outside the database.** The body also carries ``audit_head``: the audit
chain's signed head when it was rendered (pending records chained first, so the session's
own records are under it), or ``null`` while the chain is empty. Every receiver thus keeps
a checkpoint the broker's database cannot take back: ``broker audit verify --expect-head``
detects a chain cut off before it (:mod:`broker.audit.trail`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import tracing
from broker.audit.verify import Checkpoint
from broker.db import queries
from broker.db.models import SessionRow, WebhookDelivery, WebhookStatus, utcnow
from broker.db.shielded import ShieldedWrites
from broker.db.times import as_utc
from broker.record.usage import Usage
from broker.settings import Secret, Settings, SettingsError
from broker.tracing import SpanHandle
from broker.webhooks.signature import signed_headers
from sideband.backoff import backoff_delay

logger = logging.getLogger(__name__)

POLL_S: Final = 1.0
"""The longest the sender sleeps between looks at the outbox."""
BATCH: Final = 16
"""Deliveries attempted at once, at most."""
RETRY_JITTER: Final = 0.5
"""A retry waits half to all of its backoff: the retries of many deliveries spread out."""
LEASE_MARGIN_S: Final = 30.0
"""A claimed row's lease past the attempt's timeout, before another sender may retry it."""
USER_AGENT: Final = "sideband-broker-webhooks/1"
TOOL_CALL_OUTCOMES: Final = ("succeeded", "failed", "denied", "cancelled")
_RETRY_STATUSES: Final = frozenset({408, 429})


class AttemptOutcome(enum.StrEnum):
    """What one attempt came to (``WebhookSender.outcomes`` counts them)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    """The delivery gave up: refused for good, or out of attempts."""


@dataclass(frozen=True)
class WebhookConfig:
    """Where and how the sender delivers (from :class:`broker.settings.Settings`)."""

    url: str
    secret: Secret
    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 30.0
    backoff_max_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig | None:
        """The configuration, or ``None`` when no webhook URL is set.

        Raises:
            SettingsError: a URL without a secret.
        """
        if settings.webhook_url is None:
            return None
        if settings.webhook_secret is None:
            raise SettingsError("BROKER_WEBHOOK_URL is set but BROKER_WEBHOOK_SECRET is not")
        return cls(
            url=settings.webhook_url,
            secret=settings.webhook_secret,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            backoff_max_s=settings.webhook_backoff_max_s,
        )

    @property
    def host(self) -> str:
        """The receiver's host, the only part of the URL that is logged."""
        return urlsplit(self.url).hostname or "?"


@dataclass(frozen=True)
class AttemptResult:
    """How the receiver answered one attempt (``status`` ``None``: it did not)."""

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another attempt: no answer, a timeout, 408, 429 or a 5xx."""
        if self.status is None:
            return True
        return self.status in _RETRY_STATUSES or self.status >= 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    # An HTTP date is GMT; one written with a "-0000" zone parses naive.
    return max(0.0, (as_utc(when) - (now or datetime.now(UTC))).total_seconds())


def retry_delay(
    config: WebhookConfig,
    attempt: int,
    result: AttemptResult,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before the next attempt.

    The backoff, or longer if the receiver asked for it with ``Retry-After``; never beyond
    ``backoff_max_s``.
    """
    delay = backoff_delay(
        attempt, config.backoff_s, config.backoff_max_s, jitter=RETRY_JITTER, rand=rand
    )
    if result.retry_after_s is not None:
        delay = max(delay, result.retry_after_s)
    return min(delay, config.backoff_max_s)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _iso(value: datetime | None) -> str | None:
    aware = _aware(value)
    return aware.isoformat() if aware is not None else None


def audit_head_json(checkpoint: Checkpoint | None) -> dict[str, Any] | None:
    """The body's ``audit_head``: what ``verify --expect-head`` needs (``null``: empty chain)."""
    if checkpoint is None:
        return None
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
        "at": checkpoint.at,
    }


def render_session_ended(
    delivery: WebhookDelivery,
    row: SessionRow,
    tool_calls: dict[str, int],
    audit_head: Checkpoint | None = None,
) -> str:
    """The ``session.ended`` body: compact JSON (sent byte for byte on every attempt).

    ``started_at`` is when the call went live (``null`` if it never did, e.g. a failed
    offer); ``duration_s`` runs from then to ``ended_at`` (0 without a call); ``audit_head``
    is the audit chain's signed head as the body was rendered (``null`` if empty).
    """
    started, ended = _aware(row.live_at), _aware(row.ended_at)
    duration = (ended - started).total_seconds() if started and ended else 0.0
    body = {
        "id": delivery.id,
        "type": delivery.type,
        "created_at": _iso(delivery.created_at),
        "data": {
            "session_id": row.id,
            "state": row.state,
            "end_reason": row.end_reason,
            "model": row.model,
            "api_key_id": row.owner_key_id,
            "started_at": _iso(started),
            "ended_at": _iso(ended),
            "duration_s": round(max(0.0, duration), 3),
            "usage": Usage.from_columns(row).as_json(),
            "tool_calls": {outcome: tool_calls.get(outcome, 0) for outcome in TOOL_CALL_OUTCOMES},
            "audit_head": audit_head_json(audit_head),
        },
    }
    return json.dumps(body, separators=(",", ":"))


class WebhookSender:
    """Delivers the outbox's pending webhooks; one per broker process with webhooks on.

    Args:
        sessionmaker: the broker's database.
        http: the client it posts with (no cookies, no redirects followed).
        config: the receiver and the retry policy.
        poll_s: the longest pause between looks at the outbox.
        rand: the jitter's source of randomness (tests pin it).
        on_attempt: told each attempt's outcome (the metric); never raises.
        audit_head: the audit chain's head, pending records chained first (the body's
            ``audit_head``); ``None``: the bodies carry ``null``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        config: WebhookConfig,
        *,
        poll_s: float = POLL_S,
        rand: Callable[[], float] = random.random,
        on_attempt: Callable[[str], None] = lambda outcome: None,
        audit_head: Callable[[], Awaitable[Checkpoint | None]] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._http = http
        self._config = config
        self._poll_s = poll_s
        self._rand = rand
        self._on_attempt = on_attempt
        self._audit_head = audit_head
        self._lease = timedelta(seconds=config.timeout_s + LEASE_MARGIN_S)
        self._task: asyncio.Task[None] | None = None
        self._writes = ShieldedWrites()
        self.outcomes: Counter[AttemptOutcome] = Counter()
        """Attempts by outcome since start (for a ``broker_webhook_*`` metric)."""

    def start(self) -> None:
        """Start polling the outbox in an owned task (``webhook-sender``)."""
        if self._task is None:
            logger.info("webhooks on: session.ended to host %s", self._config.host)
            self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def close(self) -> None:
        """Stop; idempotent.

        An attempt under way is abandoned (its row stays pending for the next sender); the
        outcomes already known are written first.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._writes.drain()

    async def _run(self) -> None:
        while True:
            try:
                pause = await self.run_once()
            except Exception:
                # The database may be briefly away: the outbox keeps every row, try again.
                logger.exception("webhook outbox poll failed; retrying in %.1fs", self._poll_s)
                pause = self._poll_s
            await asyncio.sleep(pause)

    async def run_once(self) -> float:
        """Attempt every due delivery (up to :data:`BATCH`); return the pause until the next.

        The pause is at most ``poll_s``, and 0 when more rows are due now.
        """
        now = utcnow()
        async with self._sessionmaker() as s:
            due = await queries.due_webhooks(s, now, BATCH)
        if due:
            async with asyncio.TaskGroup() as attempts:
                tried = [
                    attempts.create_task(self._deliver(delivery_id), name=f"webhook:{delivery_id}")
                    for delivery_id in due
                ]
            if not any(task.result() for task in tried):
                # Nothing could be claimed (another sender was first, or the database
                # refused): wait a poll rather than spin on the same rows.
                return self._poll_s
            if len(due) == BATCH:
                return 0.0
        async with self._sessionmaker() as s:
            soonest = _aware(await queries.next_webhook_due(s))
        if soonest is None:
            return self._poll_s
        return min(self._poll_s, max(0.0, (soonest - utcnow()).total_seconds()))

    async def _deliver(self, delivery_id: str) -> bool:
        """Claim, post and record one delivery; whether it was claimed.

        Never raises: one bad row stops no other.
        """
        try:
            delivery = await self._claim(delivery_id)
        except Exception:
            logger.exception("could not claim webhook id=%s", delivery_id)
            return False
        if delivery is None:
            return False  # another sender took it, or it is no longer due
        # One span per attempt, the root of its own trace: the outbox may send it long after
        # the call, from another process (broker/tracing.py).
        with tracing.span(
            "broker.webhook.deliver",
            {
                "broker.session_id": delivery.session_id,
                "broker.webhook_id": delivery.id,
                "broker.webhook_type": delivery.type,
                "broker.attempt": delivery.attempts,
            },
            kind="client",
        ) as span:
            await self._attempt(delivery, span)
        return True

    async def _attempt(self, delivery: WebhookDelivery, span: SpanHandle) -> None:
        """Post one claimed delivery and record how it went; never raises but a cancellation."""
        result: AttemptResult | None = None
        try:
            body = await self._body(delivery)
            result = await self._post(delivery.id, body)
        except asyncio.CancelledError:
            # Stopped mid-attempt: the next sender may retry at once, not after the lease.
            await self._writes.run(
                self._release(delivery.id), name=f"webhook-release:{delivery.id}"
            )
            raise
        except Exception as exc:
            # A bug of ours, not the receiver's: counted as a failed attempt, so it backs off
            # (and in the end gives up) instead of failing again at every poll.
            logger.exception("webhook attempt crashed id=%s", delivery.id)
            result = AttemptResult(None, type(exc).__name__)
        try:
            # Shielded: once the receiver answered, a shutdown must not lose the outcome (a
            # delivered event would be sent again).
            outcome = await self._writes.run(
                self._record(delivery, result), name=f"webhook-record:{delivery.id}"
            )
        except Exception:
            logger.exception("could not record a webhook attempt id=%s", delivery.id)
            span.fail("webhook_not_recorded")
            return
        span.set("http.response.status_code", result.status)
        span.set("broker.outcome", outcome.value)
        if outcome is not AttemptOutcome.DELIVERED:
            span.fail(result.error or f"http {result.status}")

    async def _claim(self, delivery_id: str) -> WebhookDelivery | None:
        async with self._sessionmaker.begin() as s:
            return await queries.claim_webhook(s, delivery_id, utcnow(), self._lease)

    async def _body(self, delivery: WebhookDelivery) -> bytes:
        """The delivery's body: rendered and stored at its first attempt, then reused."""
        if delivery.payload is None:
            # Before the body's transaction: chaining takes the head's lock in one of its own.
            head = await self._audit_head() if self._audit_head is not None else None
            async with self._sessionmaker.begin() as s:
                row = await queries.get_session_row(s, delivery.session_id)
                assert row is not None  # the foreign key cascades: no row, no delivery
                counts = await queries.tool_call_counts(s, row.id)
                delivery.payload = render_session_ended(delivery, row, counts, head)
                await queries.finish_webhook_attempt(s, delivery.id, payload=delivery.payload)
        return delivery.payload.encode()

    async def _post(self, delivery_id: str, body: bytes) -> AttemptResult:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signed_headers(self._config.secret.reveal(), delivery_id, body),
        }
        tracing.inject(headers)  # a receiver that traces continues the attempt's trace
        try:
            async with asyncio.timeout(self._config.timeout_s):
                async with self._http.post(
                    self._config.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    # The answer's body is never read: it is not ours to log or keep.
                    return AttemptResult(
                        resp.status,
                        retry_after_s=parse_retry_after(resp.headers.get("Retry-After")),
                    )
        except TimeoutError:
            return AttemptResult(None, "timeout")
        except aiohttp.ClientError as exc:
            # The class name only: an exception's text can quote the URL.
            return AttemptResult(None, type(exc).__name__)

    async def _record(self, delivery: WebhookDelivery, result: AttemptResult) -> AttemptOutcome:
        attempt, most = delivery.attempts, self._config.max_attempts
        now = utcnow()
        error = result.error or (None if result.delivered else f"http {result.status}")
        fields: dict[str, Any] = {"last_status": result.status, "last_error": error}
        if result.delivered:
            outcome = AttemptOutcome.DELIVERED
            fields |= {"status": WebhookStatus.DELIVERED, "delivered_at": now}
        elif result.retryable and attempt < most:
            outcome = AttemptOutcome.RETRY
            delay = retry_delay(self._config, attempt, result, self._rand)
            fields["next_attempt_at"] = now + timedelta(seconds=delay)
        else:
            outcome = AttemptOutcome.FAILED
            fields["status"] = WebhookStatus.FAILED
        async with self._sessionmaker.begin() as s:
            await queries.finish_webhook_attempt(s, delivery.id, **fields)
        self.outcomes[outcome] += 1
        self._on_attempt(outcome.value)
        where = (delivery.id, delivery.type, delivery.session_id, attempt, most)
        if outcome is AttemptOutcome.DELIVERED:
            logger.info(
                "webhook delivered id=%s type=%s session_id=%s attempt=%d/%d status=%s",
                *where,
                result.status,
            )
        elif outcome is AttemptOutcome.RETRY:
            logger.warning(
                "webhook attempt failed id=%s type=%s session_id=%s attempt=%d/%d status=%s "
                "error=%s retry_in=%.2fs",
                *where,
                result.status,
                error,
                delay,
            )
        else:
            logger.error(
                "webhook delivery failed id=%s type=%s session_id=%s attempt=%d/%d status=%s "
                "error=%s; giving up",
                *where,
                result.status,
                error,
            )
        return outcome

    async def _release(self, delivery_id: str) -> None:
        async with self._sessionmaker.begin() as s:
            await queries.finish_webhook_attempt(
                s, delivery_id, next_attempt_at=utcnow(), last_error="interrupted"
            )
