"""Prometheus metrics, one registry per gateway (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from gateway.policy.model import Call, Decision
from gateway.ratelimit.base import LimitResult
from gateway.telemetry.counters import FastCounter as Counter
from gateway.telemetry.counters import FastHistogram as Histogram

_FAST = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_SLOW = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HUMAN = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

#: The values of ``celgate_limiter{result}`` and ``celgate_approvals{event}``, each shown at 0
#: from the start: a series that appears only at its first event cannot be alerted on
#: (``increase()`` misses that first one, and "absent" reads as "never happened").
LIMITER_RESULTS = ("admitted", "refused", "backend_error", "failed_open")
APPROVAL_EVENTS = (
    "requested",
    "approved",
    "denied",
    "used",
    "released",
    "overruled",
    "expired",
    "queue_full",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.calls = Counter(
            "celgate_calls", "tools/call decisions", ["server", "tool", "effect"], registry=reg
        )
        self.decision_seconds = Histogram(
            "celgate_decision_seconds",
            "the gateway's time to decide a call (a human's approval wait not included)",
            buckets=_FAST,
            registry=reg,
        )
        self.approval_wait_seconds = Histogram(
            "celgate_approval_wait_seconds",
            "time a call held in wait mode waited for a human to decide",
            buckets=_HUMAN,
            registry=reg,
        )
        self.upstream_seconds = Histogram(
            "celgate_upstream_seconds",
            "time forwarding an allowed call to its upstream, the answer relayed included",
            ["server"],
            buckets=_SLOW,
            registry=reg,
        )
        self.limiter_results = Counter(
            "celgate_limiter", "rate-limiter outcomes", ["result"], registry=reg
        )
        for result in LIMITER_RESULTS:
            self.limiter_results.labels(result)
        self.limiter_seconds = Histogram(
            "celgate_limiter_seconds",
            "time to take a call's tokens (a Valkey round trip with that backend)",
            buckets=_FAST,
            registry=reg,
        )
        self.limiter_backend_up = Gauge(
            "celgate_limiter_backend_up",
            "1 when the rate-limit backend answered the last call that needed it, else 0",
            registry=reg,
        )
        self._backend_up: bool | None = None
        self.approvals = Counter("celgate_approvals", "approval events", ["event"], registry=reg)
        for event in APPROVAL_EVENTS:
            self.approvals.labels(event)
        self.upstream_up = Gauge(
            "celgate_upstream_up",
            "1 when the upstream answered its last probe",
            ["server"],
            registry=reg,
        )
        self.policy_info = Gauge(
            "celgate_policy_info", "the loaded policy revision", ["revision"], registry=reg
        )

    def decision(self, call: Call, decision: Decision, seconds: float, known: bool) -> None:
        # Unknown tool names come from callers: label them together to bound cardinality.
        tool = call.tool if known else "<unknown>"
        self.calls.labels(call.server or "", tool, decision.effect).inc()
        self.decision_seconds.observe(seconds)

    def approval_wait(self, seconds: float) -> None:
        self.approval_wait_seconds.observe(seconds)

    def upstream(self, call: Call, seconds: float) -> None:
        self.upstream_seconds.labels(call.server or "").observe(seconds)

    def limiter(self, result: LimitResult, seconds: float) -> None:
        if result.backend_error:
            outcome = "failed_open" if result.failed_open else "backend_error"
        else:
            outcome = "admitted" if result.admitted else "refused"
        self.limiter_results.labels(outcome).inc()
        self.limiter_seconds.observe(seconds)
        up = not result.backend_error
        if up is not self._backend_up:
            self._backend_up = up
            self.limiter_backend_up.set(1 if up else 0)

    def approval(self, event: str) -> None:
        self.approvals.labels(event).inc()

    def set_policy(self, revision: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(revision).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
