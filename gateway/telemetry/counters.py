"""Counters and histograms for the per-call path, exposed through a Prometheus registry.

``prometheus_client``'s own take a lock on every increment and walk the buckets in Python on
every observation: five of them on each call cost more than the decision. These are plain
numbers, updated on the event loop's thread only (every call is), read when the registry is
scraped; the exposition is ``prometheus_client``'s, so the text is the same as its metrics
give (without the ``_created`` samples).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: the first bound >= value
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
        return out


Child = TypeVar("Child", CounterChild, HistogramChild)


class _Family(Generic[Child]):
    """One metric name with its label names; a child per label values, made on first use."""

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.doc = doc
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)  # a collector by its collect()

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}")
            child = self._children[values] = self._child()
        return child

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            self._add(family, list(values), child)
        yield family

    def _child(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Any, values: list[str], child: Child) -> None:
        raise NotImplementedError


class FastCounter(_Family[CounterChild]):
    def __init__(
        self, name: str, doc: str, labels: Sequence[str] = (), *, registry: CollectorRegistry
    ) -> None:
        super().__init__(name, doc, labels, registry)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def _child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.doc, labels=self.label_names)

    def _add(self, family: Any, values: list[str], child: CounterChild) -> None:
        family.add_metric(values, child.value)


class FastHistogram(_Family[HistogramChild]):
    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        super().__init__(name, doc, labels, registry)
        if not self.label_names:  # an unlabelled histogram is shown at zero from the start
            self.labels()

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.doc, labels=self.label_names)

    def _add(self, family: Any, values: list[str], child: HistogramChild) -> None:
        family.add_metric(values, child.buckets(), child.sum)
