"""What ``GET /metrics`` carries besides the broker's own counters: process and Python
metrics, the build's version, and no ``_created`` series."""

from __future__ import annotations

from importlib import metadata

from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker_server import RunningBroker
from tests.support.metrics import parse_metrics, value


async def test_metrics_have_no_created_series_even_for_counters_that_moved(
    broker: RunningBroker,
) -> None:
    await broker.create_session(tools=["lookup_order"])
    reply = await broker.request("GET", "/metrics")
    assert reply.status == 200, reply.text
    families = list(text_string_to_metric_families(reply.text))
    counters = [f for f in families if f.type in ("counter", "histogram")]
    assert any(f.name == "broker_sessions_created" for f in counters)
    created = [s.name for f in families for s in f.samples if s.name.endswith("_created")]
    assert created == []
    assert "_created{" not in reply.text and "_created " not in reply.text
    # The counter itself is still there, and counted.
    assert value(parse_metrics(reply.text), "broker_sessions_created_total") == 1


async def test_metrics_carry_process_and_python_metrics(broker: RunningBroker) -> None:
    reply = await broker.request("GET", "/metrics")
    assert reply.status == 200, reply.text
    samples = parse_metrics(reply.text)
    names = {name for name, _ in samples}
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "python_gc_collections_total",
    ):
        assert name in names, name
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name in names)


async def test_build_info_reports_the_installed_version(broker: RunningBroker) -> None:
    reply = await broker.request("GET", "/metrics")
    assert reply.status == 200, reply.text
    build = [
        (labels, v)
        for (name, labels), v in parse_metrics(reply.text).items()
        if name == "broker_build_info"
    ]
    assert build == [(frozenset({("version", metadata.version("sideband-broker"))}), 1.0)]
