"""Spend caps: a key's or a tenant's cap refuses the next session with 429 ``quota_exceeded``
(naming the cap and when it resets), a hard cap ends the live calls past it, and usage shows
what is spent and what remains.

Token usage is real: a call on loopback (aiortc browser, emulator, the broker's sideband) makes
a response whose ``response.done`` usage the broker folds into the session's row. The clock of
the caps is injected (``QuotaGuard.clock``, ``QuotaWatch.sweep(now=…)``) to see a day reset.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import app_state
from emulator import Call
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    ask,
    connect_browser,
    says,
    wait_call_ended,
    wait_events,
    wait_session_ended,
)
from tests.support.metrics import moved, scrape
from tests.support.servers import RunningEmulator


async def new_key(broker: RunningBroker, *scopes: str, **body: Any) -> tuple[str, str]:
    """A new key (by the admin key): ``(id, key)``."""
    reply = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "capped", "scopes": list(scopes), "tools": ["*"], **body},
    )
    assert reply.status == 201, reply.text
    return reply.json()["id"], reply.json()["key"]


async def put_quotas(
    broker: RunningBroker, path: str, quotas: Any, token: str | None = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if token is None else {"token": token}
    # Through ``data``: a ``null`` body clears the caps, and ``json_body=None`` sends none.
    reply = await broker.request(
        "PUT", path, data=json.dumps(quotas), content_type="application/json", **kwargs
    )
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def create(broker: RunningBroker, token: str) -> Any:
    return await broker.request("POST", "/api/v1/sessions", token=token, json_body={})


async def created(broker: RunningBroker, token: str) -> dict[str, Any]:
    reply = await create(broker, token)
    assert reply.status == 201, reply.text
    session: dict[str, Any] = reply.json()
    return session


def tokens_of(detail: dict[str, Any]) -> int:
    usage = detail["usage"]
    return int(usage["total_tokens"]) + int(usage["input_transcription"]["total_tokens"])


async def talk(broker: RunningBroker, session: dict[str, Any]) -> FakeBrowser:
    """A live call that made one response, whose usage the session's row now counts."""
    browser = await connect_browser(broker, session)
    ask(browser, "hello there")
    await browser.wait_for("response.done", says("You said: hello there"))
    async with asyncio.timeout(5):
        while (await broker.get_session(session["id"]))["usage"]["responses"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return browser


def call_of(emulator: RunningEmulator, detail: dict[str, Any]) -> Call:
    call = emulator.registry.get(detail["call_id"])
    assert call is not None
    return call


async def audit_records(broker: RunningBroker, kind: str, count: int) -> list[dict[str, Any]]:
    """The chained audit records of ``kind``, once there are ``count`` (chained after commit)."""
    async with asyncio.timeout(5):
        while True:
            reply = await broker.request("GET", f"/api/v1/audit?kind={kind}")
            assert reply.status == 200, reply.text
            records: list[dict[str, Any]] = reply.json()["records"]
            if len(records) >= count:
                return records
            await asyncio.sleep(0.05)


def next_midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_a_tenant_over_its_daily_token_cap_gets_429_until_the_next_utc_day(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Invariant: once the tenant's sessions of the day spent its max_tokens_per_day, the next
    session of any of its keys is refused 429 quota_exceeded naming the tenant's cap, with
    resets_at the next UTC midnight; from that midnight on, sessions are taken again. Without
    hard_cap the running call goes on."""
    key_id, token = await new_key(broker, "sessions:create")
    tenant = (await broker.request("GET", "/api/v1/usage", token=token)).json()["tenant"]["id"]
    caps_path = f"/api/v1/tenants/{tenant}/quotas"
    set_to = await put_quotas(broker, caps_path, {"max_tokens_per_day": 10**9})
    assert set_to == {"scope": "tenant", "id": tenant, "quotas": {"max_tokens_per_day": 10**9}}
    _, other_token = await new_key(broker, "sessions:create")  # the same tenant's

    session = await created(broker, token)
    browser = await talk(broker, session)
    try:
        detail = await broker.get_session(session["id"])
        spent = tokens_of(detail)
        assert spent > 1
        # The clock the caps read: a moment of the session's day.
        now = datetime.fromisoformat(detail["created_at"]).astimezone(UTC) + timedelta(seconds=1)
        broker.app[app_state.SESSIONS].quotas.clock = lambda: now
        # One token left: still taken.
        await put_quotas(broker, caps_path, {"max_tokens_per_day": spent + 1})
        await created(broker, token)
        # Reached: refused.
        await put_quotas(broker, caps_path, {"max_tokens_per_day": spent})
        before = await scrape(broker)

        for refused_token in (token, other_token):
            refused = await create(broker, refused_token)
            assert refused.status == 429, refused.text
            problem = refused.json()
            resets_at = next_midnight(now)
            assert problem["code"] == "quota_exceeded"
            assert (problem["cap"], problem["limit"]) == ("tenant", "max_tokens_per_day")
            assert (problem["allowed"], problem["used"]) == (spent, spent)
            assert problem["resets_at"] == rfc3339(resets_at)
            retry_after = math.ceil((resets_at - now).total_seconds())
            assert problem["retry_after"] == retry_after
            assert refused.headers["Retry-After"] == str(retry_after)

        after = await scrape(broker)
        assert (
            moved(before, after, "broker_quota_refusals_total", cap="tenant.max_tokens_per_day")
            == 2
        )
        records = await audit_records(broker, "quota.exceeded", 2)
        assert records[0]["actor"] == "broker"
        assert records[0]["body"] == {
            "scope": "tenant",
            "id": tenant,
            "limit": "max_tokens_per_day",
            "allowed": spent,
            "used": spent,
            "resets_at": rfc3339(resets_at),
            "action": "refused",
        }

        # No hard cap: the running call is not ended by the sweep.
        assert await broker.app[app_state.QUOTA_WATCH].sweep(now) == 0
        assert (await broker.get_session(session["id"]))["state"] == "live"

        # The usage the key sees: its tenant's cap spent, none remaining, and when it resets.
        usage = (await broker.request("GET", "/api/v1/usage", token=token)).json()
        assert usage["tenant"]["caps"] == {
            "max_tokens_per_day": {
                "allowed": spent,
                "used": spent,
                "remaining": 0,
                "resets_at": rfc3339(resets_at),
            }
        }
        assert usage["key"]["id"] == key_id and usage["key"]["caps"] == {}
        assert usage["key"]["used"] == {
            "live_calls": 1,
            "sessions_today": 2,
            "tokens_today": spent,
            "tokens_this_month": spent,
        }
        assert usage["tenant"]["used"]["tokens_today"] == spent

        # The next UTC day: the day's tokens start over.
        broker.app[app_state.SESSIONS].quotas.clock = lambda: resets_at
        await created(broker, token)
    finally:
        await browser.close()


async def test_sessions_per_day_and_live_calls_are_capped_per_key(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """A key's max_sessions_per_day refuses its next session until midnight; its
    max_live_calls refuses while a call is live (no reset time: when one ends) and takes
    sessions again once it ended; other keys are not held by either."""
    daily_id, daily = await new_key(broker, "sessions:create")
    await put_quotas(broker, f"/api/v1/keys/{daily_id}/quotas", {"max_sessions_per_day": 2})
    now = datetime.now(UTC)
    broker.app[app_state.SESSIONS].quotas.clock = lambda: now
    await created(broker, daily)
    await created(broker, daily)
    refused = await create(broker, daily)
    assert refused.status == 429, refused.text
    problem = refused.json()
    assert (problem["cap"], problem["limit"], problem["used"]) == ("key", "max_sessions_per_day", 2)
    assert problem["resets_at"] == rfc3339(next_midnight(now))

    live_id, live = await new_key(broker, "sessions:create")
    await put_quotas(broker, f"/api/v1/keys/{live_id}/quotas", {"max_live_calls": 1})
    await created(broker, live)  # created, never offered: not a live call
    session = await created(broker, live)
    browser = await connect_browser(broker, session)
    try:
        refused = await create(broker, live)
        assert refused.status == 429, refused.text
        problem = refused.json()
        assert (problem["cap"], problem["limit"]) == ("key", "max_live_calls")
        assert (problem["allowed"], problem["used"], problem["resets_at"]) == (1, 1, None)
        assert refused.headers["Retry-After"] == str(problem["retry_after"])
        usage = (await broker.request("GET", "/api/v1/usage", token=live)).json()
        assert usage["key"]["caps"]["max_live_calls"] == {
            "allowed": 1,
            "used": 1,
            "remaining": 0,
            "resets_at": None,
        }
        # Another key of the same tenant is not held by this key's caps.
        _, free = await new_key(broker, "sessions:create")
        await created(broker, free)

        ended = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/end",
            token=session["client_secret"]["value"],
        )
        assert ended.status == 200, ended.text
        await wait_session_ended(broker, session["id"])
        await created(broker, live)
    finally:
        await browser.close()


async def test_live_calls_are_capped_at_the_offer_too(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Sessions made while under max_live_calls cannot all be offered: a call counts from its
    offer, so the second offer is 429 quota_exceeded (nothing spent, the session still
    offerable) and goes through once the first call ended."""
    key_id, key = await new_key(broker, "sessions:create")
    await put_quotas(broker, f"/api/v1/keys/{key_id}/quotas", {"max_live_calls": 1})
    first = await created(broker, key)
    second = await created(broker, key)
    browser = await connect_browser(broker, first)
    waiting = FakeBrowser()
    try:
        refused = await broker.offer(second, await waiting.create_offer())
        assert refused.status == 429, refused.text
        problem = refused.json()
        assert (problem["code"], problem["cap"], problem["limit"]) == (
            "quota_exceeded",
            "key",
            "max_live_calls",
        )
        detail = (await broker.request("GET", f"/api/v1/sessions/{second['id']}")).json()
        assert detail["state"] == "created"
        ended = await broker.request(
            "POST", f"/api/v1/sessions/{first['id']}/end", token=first["client_secret"]["value"]
        )
        assert ended.status == 200, ended.text
        await wait_session_ended(broker, first["id"])
        # The same client secret: the refusal spent nothing.
        later = await connect_browser(broker, second, waiting)
        await later.close()
    finally:
        await waiting.close()
        await browser.close()


async def test_a_live_call_past_a_hard_cap_is_ended_with_its_reason(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Invariant: with hard_cap, the sweep hangs up a live call whose key spent its token cap:
    the provider's hangup, a broker.leash event naming quota_exceeded, end_reason
    quota_exceeded, a quota.exceeded audit record naming the session; once only."""
    key_id, token = await new_key(broker, "sessions:create")
    await put_quotas(
        broker,
        f"/api/v1/keys/{key_id}/quotas",
        {"max_tokens_per_month": 1, "hard_cap": True},
    )
    session = await created(broker, token)
    browser = await talk(broker, session)
    try:
        detail = await broker.get_session(session["id"])
        call = call_of(emulator, detail)
        spent = tokens_of(detail)
        watch = broker.app[app_state.QUOTA_WATCH]
        assert await watch.sweep() == 1
        ended = await wait_session_ended(broker, session["id"])
        assert (ended["state"], ended["end_reason"]) == ("ended", "quota_exceeded")
        await wait_call_ended(call)
        assert call.end_reason == "hangup"
        [event] = await wait_events(broker, session["id"], "broker.leash")
        assert event["payload"] == {
            "type": "broker.leash",
            "limit": "quota_exceeded",
            "value": 1,
            "cap": "key",
            "quota": "max_tokens_per_month",
            "used": spent,
        }
        [record] = await audit_records(broker, "quota.exceeded", 1)
        assert record["session_id"] == session["id"]
        assert record["body"]["action"] == "ended" and record["body"]["id"] == key_id
        [end] = [
            r
            for r in await audit_records(broker, "session.ended", 1)
            if r["session_id"] == session["id"]
        ]
        assert end["actor"] == "broker"
        assert await watch.sweep() == 0  # ended once
    finally:
        await browser.close()


async def test_setting_quotas_is_validated_audited_and_scoped_to_the_tenant(
    broker: RunningBroker,
) -> None:
    """PUT quotas: 422 with a code for caps that are not valid (nothing stored), null clears,
    every change is a quota.changed record; a tenant's admin reaches only its own tenant and
    keys (404 otherwise, as if they did not exist); only admin may set caps."""
    key_id, _ = await new_key(broker, "sessions:create")
    path = f"/api/v1/keys/{key_id}/quotas"
    for body, code in (
        ({"max_live_calls": 0}, "invalid_quotas"),
        ({"max_live_calls": "3"}, "invalid_quotas"),
        ({"max_live_calls": True}, "invalid_quotas"),
        ({"max_tokens_per_day": 10**16}, "invalid_quotas"),
        ({"max_calls": 3}, "invalid_quotas"),
        ({"hard_cap": True, "max_live_calls": 2}, "hard_cap_without_token_cap"),
    ):
        reply = await broker.request("PUT", path, json_body=body)
        assert reply.status == 422, (body, reply.text)
        assert reply.json()["code"] == code and reply.json()["errors"], body
    not_object = await broker.request("PUT", path, data="[1]", content_type="application/json")
    assert (not_object.status, not_object.json()["code"]) == (400, "invalid_json")

    caps = {"max_sessions_per_day": 5, "max_tokens_per_day": 1000, "hard_cap": True}
    assert (await put_quotas(broker, path, caps))["quotas"] == caps
    assert (await put_quotas(broker, path, None))["quotas"] is None
    changes = await audit_records(broker, "quota.changed", 2)
    assert [(r["body"]["before"], r["body"]["after"]) for r in changes[-2:]] == [
        (None, caps),
        (caps, None),
    ]
    assert changes[-1]["actor"] == "key:admin"

    unknown = await broker.request("PUT", "/api/v1/keys/nokey/quotas", json_body={})
    assert (unknown.status, unknown.json()["code"]) == (404, "key_not_found")
    _, reader = await new_key(broker, "monitor:read")
    refused = await broker.request("PUT", path, json_body={}, token=reader)
    assert (refused.status, refused.json()["code"]) == (403, "insufficient_scope")

    # Two tenants: "acme"'s admin sets acme's caps and its keys', and finds nothing else.
    made = await broker.request("POST", "/api/v1/tenants", json_body={"id": "acme", "name": "A"})
    assert made.status == 201, made.text
    acme_admin_id, acme_admin = await new_key(broker, "admin", tenant="acme")
    await put_quotas(broker, "/api/v1/tenants/acme/quotas", {"max_live_calls": 3}, acme_admin)
    await put_quotas(
        broker, f"/api/v1/keys/{acme_admin_id}/quotas", {"max_live_calls": 1}, acme_admin
    )
    for other in ("/api/v1/tenants/default/quotas", path, "/api/v1/tenants/nope/quotas"):
        hidden = await broker.request("PUT", other, json_body={}, token=acme_admin)
        assert hidden.status == 404, (other, hidden.text)
        assert hidden.json()["code"] in ("key_not_found", "tenant_not_found")
    usage = (await broker.request("GET", "/api/v1/usage", token=acme_admin)).json()
    assert usage["tenant"]["id"] == "acme"
    assert usage["tenant"]["caps"]["max_live_calls"]["allowed"] == 3
    assert usage["key"]["caps"]["max_live_calls"]["allowed"] == 1


async def test_a_cross_tenant_keys_session_counts_against_the_tenant_it_names(
    broker: RunningBroker,
) -> None:
    """The admin key names a session's tenant: that tenant's caps refuse it, not the default's;
    a session of another tenant is not held by them."""
    made = await broker.request("POST", "/api/v1/tenants", json_body={"id": "acme", "name": "A"})
    assert made.status == 201, made.text
    await put_quotas(broker, "/api/v1/tenants/acme/quotas", {"max_sessions_per_day": 1})
    await broker.create_session(tools=[], tenant="acme")
    refused = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": [], "tenant": "acme"}
    )
    assert refused.status == 429, refused.text
    assert (refused.json()["cap"], refused.json()["used"]) == ("tenant", 1)
    await broker.create_session(tools=[])  # the default tenant's: no caps
