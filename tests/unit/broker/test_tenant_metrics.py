"""TenantMetrics: a capped ``tenant`` label, and nothing registered when switched off."""

from __future__ import annotations

from broker.metrics import BrokerMetrics
from broker.tenant_metrics import TenantLabels


def test_labels_keep_the_first_tenants_and_fold_the_rest() -> None:
    labels = TenantLabels(2)
    assert [labels.of(t) for t in ("a", "b", "c", "a", "b", "d")] == [
        "a",
        "b",
        "other",
        "a",
        "b",
        "other",
    ]


def test_counts_by_tenant_with_the_cap() -> None:
    metrics = BrokerMetrics(max_tenants=1)
    metrics.tenants.session_created("acme")
    metrics.tenants.session_created("globex")
    metrics.tenants.quota_refused("globex")
    metrics.tenants.quota_refused("acme")
    get = metrics.registry.get_sample_value
    assert get("broker_tenant_sessions_created_total", {"tenant": "acme"}) == 1
    assert get("broker_tenant_sessions_created_total", {"tenant": "other"}) == 1
    assert get("broker_tenant_quota_refusals_total", {"tenant": "other"}) == 1
    assert get("broker_tenant_quota_refusals_total", {"tenant": "acme"}) == 1
    assert "globex" not in metrics.render()[0].decode()


def test_tool_calls_by_tenant_take_the_tool_outcome_labels() -> None:
    """The outcome is reduced as ``broker_tool_calls_total``'s; no tenant: not counted."""
    metrics = BrokerMetrics()
    metrics.set_tools(["lookup_order"])
    metrics.tool_finished("lookup_order", "succeeded", 0.1, "acme")
    metrics.tool_finished("lookup_order", "exploded", 0.1, "acme")
    metrics.tool_finished("lookup_order", "denied", None, None)
    get = metrics.registry.get_sample_value
    labels = {"tenant": "acme"}
    assert get("broker_tenant_tool_calls_total", labels | {"outcome": "succeeded"}) == 1
    assert get("broker_tenant_tool_calls_total", labels | {"outcome": "other"}) == 1
    assert get("broker_tool_calls_total", {"tool": "lookup_order", "outcome": "denied"}) == 1
    assert 'outcome="denied",tenant' not in metrics.render()[0].decode()


def test_switched_off_registers_nothing() -> None:
    metrics = BrokerMetrics(tenant_labels=False)
    metrics.tenants.session_created("acme")
    metrics.tenants.quota_refused("acme")
    metrics.tool_finished("lookup_order", "succeeded", 0.1, "acme")
    assert "broker_tenant_" not in metrics.render()[0].decode()
