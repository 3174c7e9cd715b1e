"""Per-tenant metrics: which team is using the broker's capacity and hitting its caps.

A tenant id is not free text from a request (an admin creates tenants), but the set still grows
with configuration, and each id is a series per metric. So the ``tenant`` label takes at most
``BROKER_METRICS_MAX_TENANTS`` distinct values per process, first seen first kept; any further
tenant is counted as ``other``. ``BROKER_METRICS_TENANT_LABELS=false`` registers none of these
metrics (the tenant-free totals in :mod:`broker.metrics` are kept either way).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter

OTHER: Final = "other"
"""The label of every tenant past the cap (``broker.metrics.OTHER``, which imports this module)."""
DEFAULT_MAX_TENANTS: Final = 100
"""Distinct ``tenant`` label values a process reports by default (then ``other``)."""


class TenantLabels:
    """Maps tenant ids onto at most ``cap`` label values; later ones become ``other``.

    First seen, first kept: a tenant that has a label keeps it for the process's life, so its
    counters never move between series. Which tenants get one can differ between replicas
    (each sees its own order); ``sum by (tenant)`` across them still adds up.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept: set[str] = set()

    def of(self, tenant_id: str) -> str:
        """The label value of ``tenant_id``: itself while there is room, else ``other``."""
        if tenant_id in self._kept:
            return tenant_id
        if len(self._kept) < self._cap:
            self._kept.add(tenant_id)
            return tenant_id
        return OTHER


class TenantMetrics:
    """The ``broker_tenant_*`` counters, or nothing at all when ``enabled`` is false.

    Methods are cheap, synchronous and never raise on their input, as
    :class:`~broker.metrics.BrokerMetrics`' are.
    """

    def __init__(
        self, registry: CollectorRegistry, namespace: str, *, enabled: bool, max_tenants: int
    ) -> None:
        self._labels = TenantLabels(max_tenants)
        self._sessions_created: Counter | None = None
        self._quota_refusals: Counter | None = None
        self._tool_calls: Counter | None = None
        if not enabled:
            return  # not registered: /metrics shows no tenant series, not even empty ones
        self._sessions_created = Counter(
            "tenant_sessions_created_total",
            "Sessions created, by the tenant that owns them.",
            ["tenant"],
            namespace=namespace,
            registry=registry,
        )
        self._quota_refusals = Counter(
            "tenant_quota_refusals_total",
            "Sessions and offers refused with 429 quota_exceeded, by the session's tenant.",
            ["tenant"],
            namespace=namespace,
            registry=registry,
        )
        self._tool_calls = Counter(
            "tenant_tool_calls_total",
            "Settled tool calls, by their session's tenant and outcome.",
            ["tenant", "outcome"],
            namespace=namespace,
            registry=registry,
        )

    def session_created(self, tenant_id: str) -> None:
        """Count one session created in ``tenant_id``."""
        if self._sessions_created is not None:
            self._sessions_created.labels(self._labels.of(tenant_id)).inc()

    def quota_refused(self, tenant_id: str) -> None:
        """Count one session or offer of ``tenant_id`` refused over a cap (key's or tenant's)."""
        if self._quota_refusals is not None:
            self._quota_refusals.labels(self._labels.of(tenant_id)).inc()

    def tool_finished(self, tenant_id: str, outcome: str) -> None:
        """Count one settled tool call of a session of ``tenant_id``.

        ``outcome``: already one of ``broker_tool_calls_total``'s values (or ``other``).
        """
        if self._tool_calls is not None:
            self._tool_calls.labels(self._labels.of(tenant_id), outcome).inc()
