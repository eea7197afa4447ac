"""The wait a rate-limited caller is told is never shorter than the true one: the text
("Retry after N s.") and ``_meta``'s ``retry_after`` both round up. "1.8 s." for 1.838 s, or
"0.0 s." for 0.027 s, made a caller that waited what it was told be refused again (the
limiter's own ``retry_after`` is already padded so that waiting it exactly succeeds)."""

from __future__ import annotations

import re

import pytest

from gateway.edge.replies import decision_payload, denial_text
from gateway.policy.model import Decision, LimitState


def limited(wait: float) -> Decision:
    state = LimitState(remaining={"calls": 0.0}, refused_by="calls", retry_after=wait)
    return Decision("deny", "limit:calls", "rate limit calls", "rev", limit_state=state)


@pytest.mark.parametrize(
    ("wait", "text", "meta"),
    [
        (1.838, "1.9", 1.838),
        (0.027, "0.1", 0.027),
        (0.0004, "0.1", 0.001),
        (2.0, "2.0", 2.0),
        (1.23449, "1.3", 1.235),
    ],
)
def test_the_wait_told_is_never_shorter(wait: float, text: str, meta: float) -> None:
    decision = limited(wait)
    told = re.search(r"Retry after ([0-9.]+) s\.", denial_text(decision))
    assert told is not None and told.group(1) == text
    assert decision_payload(decision, "d1")["retry_after"] == meta
    assert float(told.group(1)) >= wait and meta >= wait
