"""Every outcome series of the limiter and the approvals is there at 0 from the start: one
that appears only at its first event cannot be alerted on (``increase()`` misses the first
event, and an absent series reads as "never happened")."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import APPROVAL_EVENTS, LIMITER_RESULTS, Metrics


def totals(metrics: Metrics, family: str, label: str) -> dict[str, float]:
    return {
        s.labels[label]: s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == family
        for s in f.samples
        if s.name == f"{family}_total"
    }


def test_a_fresh_gateway_shows_every_outcome_at_zero() -> None:
    metrics = Metrics()
    assert totals(metrics, "celgate_approvals", "event") == dict.fromkeys(APPROVAL_EVENTS, 0.0)
    assert totals(metrics, "celgate_limiter", "result") == dict.fromkeys(LIMITER_RESULTS, 0.0)


def test_events_count_on_the_series_already_shown() -> None:
    metrics = Metrics()
    metrics.approval("queue_full")
    shown = totals(metrics, "celgate_approvals", "event")
    assert shown["queue_full"] == 1.0 and sum(shown.values()) == 1.0
    assert set(shown) == set(APPROVAL_EVENTS)
