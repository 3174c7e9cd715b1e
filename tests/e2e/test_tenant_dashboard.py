"""The ops dashboard in Chromium with two tenants: a tenant's ops key sees its own sessions.

The dashboard reads the API with the pasted key, so it shows what the API scopes to that key's
tenant: the list holds only the tenant's sessions, and another tenant's session page says the
session was not found, as it would for one that never existed.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.test_ops_dashboard import assert_no_page_errors, sign_in, wait_visible
from tests.support.broker_server import RunningBroker
from tests.support.tenants import make_team, new_session


async def test_a_tenants_ops_key_sees_only_its_tenants_sessions(
    broker: RunningBroker, page: Any
) -> None:
    a, b = await make_team(broker, "a"), await make_team(broker, "b")
    mine = [(await new_session(broker, a))["id"] for _ in range(2)]
    theirs = (await new_session(broker, b))["id"]

    await sign_in(page, broker, a.ops)
    for session_id in mine:
        row = await wait_visible(page, f'#sessions tr[data-session-id="{session_id}"]')
        assert await row.get_attribute("data-tenant") == "a"
    shown = await page.eval_on_selector_all(
        "#sessions tr[data-session-id]", "rows => rows.map(row => row.dataset.sessionId)"
    )
    assert sorted(shown) == sorted(mine)

    await page.goto(f"{broker.base_url}/ops/#/sessions/{theirs}")
    error = await wait_visible(page, '#error[data-code="session_not_found"]')
    assert "404" in await error.inner_text()

    # b's own ops key opens the same page.
    await page.click("#forget-key")
    await page.fill("#key-input", b.ops)
    await page.click("#key-save")
    await page.goto(f"{broker.base_url}/ops/#/sessions/{theirs}")
    await wait_visible(page, '#session-state[data-state="created"]')
    assert_no_page_errors(page)
