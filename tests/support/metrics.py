"""Reading ``GET /metrics`` the way Prometheus does: with ``prometheus_client``'s parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker_server import ADMIN_KEY, RunningBroker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a label set not yet seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How far one sample moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


async def scrape(broker: RunningBroker, token: str = ADMIN_KEY) -> Samples:
    reply = await broker.request("GET", "/metrics", token=token)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    return parse_metrics(reply.text)
