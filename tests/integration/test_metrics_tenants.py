"""``/metrics`` by tenant: each team's sessions and quota refusals in its own series.

Real brokers (SQLite), tenants and keys made over the API, every scrape parsed with
``prometheus_client``'s parser. The ``tenant`` label is capped (``BROKER_METRICS_MAX_TENANTS``)
and can be switched off (``BROKER_METRICS_TENANT_LABELS``).
"""

from __future__ import annotations

import json

from tests.support.broker_server import BrokerFactory, RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says
from tests.support.metrics import Samples, moved, scrape, value
from tests.support.servers import RunningEmulator
from tests.support.tenants import Team, make_team, new_session

CREATED = "broker_tenant_sessions_created_total"
REFUSED = "broker_tenant_quota_refusals_total"
TOOL_CALLS = "broker_tenant_tool_calls_total"


async def cap_sessions_per_day(broker: RunningBroker, tenant: str, cap: int) -> None:
    reply = await broker.request(
        "PUT",
        f"/api/v1/tenants/{tenant}/quotas",
        data=json.dumps({"max_sessions_per_day": cap}),
        content_type="application/json",
    )
    assert reply.status == 200, reply.text


async def test_two_tenants_sessions_and_refusals_split_by_tenant(
    make_broker: BrokerFactory,
) -> None:
    """Each session counts in its own tenant's series, a quota refusal in the refused
    session's tenant's, and the tenant series add up to the tenant-free totals."""
    broker = await make_broker()
    alpha = await make_team(broker, "alpha")
    beta = await make_team(broker, "beta")
    await cap_sessions_per_day(broker, "beta", 1)
    before = await scrape(broker)

    await new_session(broker, alpha)
    await new_session(broker, alpha)
    await new_session(broker, beta)
    refused = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, token=beta.app
    )
    assert refused.status == 429, refused.text
    after = await scrape(broker)

    assert moved(before, after, CREATED, tenant="alpha") == 2
    assert moved(before, after, CREATED, tenant="beta") == 1
    assert moved(before, after, REFUSED, tenant="beta") == 1
    assert moved(before, after, REFUSED, tenant="alpha") == 0
    assert moved(before, after, "broker_sessions_created_total") == 3
    assert (
        moved(before, after, "broker_quota_refusals_total", cap="tenant.max_sessions_per_day") == 1
    )
    assert value(after, CREATED, tenant="other") == 0
    # The existing metrics keep their labels: no tenant on them.
    assert not [
        labels
        for (name, labels) in after
        if not name.startswith("broker_tenant_") and any(key == "tenant" for key, _ in labels)
    ]


async def run_lookup(broker: RunningBroker, team: Team) -> Samples:
    """One call of ``team``'s: the model calls ``lookup_order``, the sideband runs it; then
    a scrape."""
    browser = await connect_browser(broker, await new_session(broker, team))
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=10)
    finally:
        await browser.close()
    return await scrape(broker)


async def test_tool_calls_are_counted_in_their_sessions_tenant(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """A tool call run on one tenant's call moves that tenant's series only."""
    alpha = await make_team(broker, "alpha")
    beta = await make_team(broker, "beta")
    before = await scrape(broker)

    after_alpha = await run_lookup(broker, alpha)
    assert moved(before, after_alpha, TOOL_CALLS, tenant="alpha", outcome="succeeded") == 1
    assert moved(before, after_alpha, TOOL_CALLS, tenant="beta", outcome="succeeded") == 0

    after_beta = await run_lookup(broker, beta)
    assert moved(after_alpha, after_beta, TOOL_CALLS, tenant="beta", outcome="succeeded") == 1
    assert moved(after_alpha, after_beta, TOOL_CALLS, tenant="alpha", outcome="succeeded") == 0
    total = {"tool": "lookup_order", "outcome": "succeeded"}
    assert moved(before, after_beta, "broker_tool_calls_total", **total) == 2


async def test_tenants_past_the_cap_are_counted_as_other(make_broker: BrokerFactory) -> None:
    """With room for two tenant labels, the first two tenants seen keep theirs for good and
    every further tenant is folded into ``other``: the series count stays at the cap + 1."""
    broker = await make_broker(metrics_max_tenants=2)
    teams = [await make_team(broker, name) for name in ("t1", "t2", "t3", "t4")]
    for team in teams:
        await new_session(broker, team)
    await new_session(broker, teams[0])  # a kept tenant stays kept after the cap is full
    await new_session(broker, teams[3])
    samples = await scrape(broker)

    assert value(samples, CREATED, tenant="t1") == 2
    assert value(samples, CREATED, tenant="t2") == 1
    assert value(samples, CREATED, tenant="other") == 3
    assert {dict(labels)["tenant"] for (name, labels) in samples if name == CREATED} == {
        "t1",
        "t2",
        "other",
    }


async def test_tenant_labels_off_exports_no_tenant_series(make_broker: BrokerFactory) -> None:
    """``metrics_tenant_labels=False``: no ``broker_tenant_*`` family at all (not even its
    HELP line), while the tenant-free counters go on counting."""
    broker = await make_broker(metrics_tenant_labels=False)
    team = await make_team(broker, "quiet")
    await cap_sessions_per_day(broker, "quiet", 1)
    await new_session(broker, team)
    refused = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, token=team.app
    )
    assert refused.status == 429, refused.text

    text = (await broker.request("GET", "/metrics")).text
    assert "broker_tenant_" not in text
    samples = await scrape(broker)
    assert value(samples, "broker_sessions_created_total") == 1
    assert value(samples, "broker_quota_refusals_total", cap="tenant.max_sessions_per_day") == 1
