"""The per-call counters and histograms expose what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.telemetry.counters import FastCounter, FastHistogram

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# On a bound (le: counted there), between bounds, below all, above all, and zero.
VALUES = (0.001, 0.0015, 0.01, 0.5, 1.0, 7.0, 0.0, 0.0001, 0.1)


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_histogram_reads_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("t_seconds", "a time", ["server"], buckets=BOUNDS, registry=ours)
    slow = Histogram("t_seconds", "a time", ["server"], buckets=BOUNDS, registry=theirs)
    for i, value in enumerate(VALUES):
        server = "a" if i % 2 else "b"
        fast.labels(server).observe(value)
        slow.labels(server).observe(value)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("t_seconds_bucket", {"server": "b", "le": "0.001"}) == 2.0
    assert ours.get_sample_value("t_seconds_count", {"server": "a"}) == 4.0


def test_an_unlabelled_histogram_shows_zero_before_any_observation() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    FastHistogram("d_seconds", "a time", buckets=BOUNDS, registry=ours)
    Histogram("d_seconds", "a time", buckets=BOUNDS, registry=theirs)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("d_seconds_count") == 0.0


def test_a_counter_reads_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounter("c", "calls", ["effect"], registry=ours)
    slow = Counter("c", "calls", ["effect"], registry=theirs)
    for effect in ("allow", "deny", "allow"):
        fast.labels(effect).inc()
        slow.labels(effect).inc()
    fast.labels("deny").inc(2.5)
    slow.labels("deny").inc(2.5)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("c_total", {"effect": "deny"}) == 3.5


def test_labels_are_checked_and_names_stay_unique() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("x", "x", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        FastHistogram("x", "x again", buckets=BOUNDS, registry=registry)
