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


def test_switched_off_registers_nothing() -> None:
    metrics = BrokerMetrics(tenant_labels=False)
    metrics.tenants.session_created("acme")
    metrics.tenants.quota_refused("acme")
    assert "broker_tenant_" not in metrics.render()[0].decode()
