"""BrokerMetrics: each instance counts alone, and no label takes a value outside its set."""

from __future__ import annotations

import pytest

from broker.errors import ConflictError, UpstreamError
from broker.metrics import BrokerMetrics, OfferOutcome, end_reason_label
from broker.session.end_reason import EndReason
from broker.session.offer_failure import OfferFailure, offer_outcome, safe_provider_code
from sideband import ProviderError, ProviderTimeoutError, ProviderUnreachableError


def sample(metrics: BrokerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = BrokerMetrics(), BrokerMetrics()
    first.session_created("default")
    assert sample(first, "broker_sessions_created_total") == 1
    assert sample(second, "broker_sessions_created_total") == 0


def test_tool_label_only_takes_registry_names() -> None:
    """A tool name from the model or a browser cannot create a new series."""
    metrics = BrokerMetrics()
    metrics.set_tools(["lookup_order"])
    metrics.tool_finished("lookup_order", "succeeded", 0.2)
    metrics.tool_finished("made_up_tool_1", "failed", 0.1)
    metrics.tool_finished("lookup_order", "exploded", None)
    metrics.circuit_changed("made_up_tool_2", "open")
    metrics.circuit_changed("lookup_order", "half_open")
    assert sample(metrics, "broker_tool_calls_total", tool="lookup_order", outcome="succeeded") == 1
    assert sample(metrics, "broker_tool_calls_total", tool="other", outcome="failed") == 1
    assert sample(metrics, "broker_tool_calls_total", tool="lookup_order", outcome="other") == 1
    assert sample(metrics, "broker_tool_seconds_count", tool="lookup_order") == 1
    assert sample(metrics, "broker_tool_circuit_state", tool="other") == 2
    assert sample(metrics, "broker_tool_circuit_state", tool="lookup_order") == 1
    text = metrics.render()[0].decode()
    assert "made_up_tool" not in text


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("max_duration", EndReason.MAX_DURATION),
        ("idle_timeout", EndReason.IDLE_TIMEOUT),
        ("tool_budget", EndReason.TOOL_BUDGET),
        ("tamper", EndReason.TAMPER),
        ("tamper_repeated", EndReason.TAMPER),
        ("provider_closed:1000", EndReason.PROVIDER_CLOSED),
        ("hangup", EndReason.HANGUP),
        ("sideband: call not found at the provider", EndReason.CALL_GONE),
        ("sideband: something else", EndReason.FAILED),
        ("offer: the provider did not answer in 10s", EndReason.OFFER_FAILED),
        ("anything a future path writes", EndReason.OTHER),
        (None, EndReason.OTHER),
    ],
)
def test_end_reasons_reduce_to_a_fixed_set(reason: str | None, label: EndReason) -> None:
    assert end_reason_label(reason) is label


def test_provider_failures_are_labelled_by_operation_and_status() -> None:
    metrics = BrokerMetrics()
    metrics.provider_failed(ProviderError(503, "server_error", "create_call"))
    metrics.provider_failed(ProviderTimeoutError("hangup", 1.0))
    metrics.provider_failed(ProviderUnreachableError("sideband_attach", "OSError"))
    metrics.provider_failed(ProviderError(999, None, "something_new"))
    for operation, status in (
        ("create_call", "503"),
        ("hangup", "timeout"),
        ("sideband_attach", "unreachable"),
        ("other", "other"),
    ):
        assert (
            sample(metrics, "broker_provider_errors_total", operation=operation, status=status) == 1
        )


def test_offer_outcomes_and_safe_codes() -> None:
    assert offer_outcome(None) is OfferOutcome.ANSWERED
    assert offer_outcome(ConflictError("session_already_offered", "x")) is OfferOutcome.REFUSED
    assert offer_outcome(UpstreamError("provider_timeout", "x")) is OfferOutcome.PROVIDER_TIMEOUT
    assert offer_outcome(RuntimeError()) is OfferOutcome.ERROR
    assert safe_provider_code("server_error") == "server_error"
    assert safe_provider_code("see https://x/?key=sk-123 now") is None
    assert safe_provider_code("server_error\n") is None
    failure = OfferFailure.from_provider(ProviderError(500, "Bearer sk-abc def", "create_call"))
    assert failure.provider_code is None
    assert failure.end_reason == "offer: the provider refused the call with HTTP 500"
