"""Decision ids are shown to agents (``_meta["io.celgate/decision"].decision_id``): they must
tell an agent nothing of other agents' calls. They were a per-process prefix and a counter,
so two ids of one agent, subtracted, counted the calls others made in between (red-team
wave 32), and the prefix named the replica."""

from __future__ import annotations

import itertools
import re

from gateway.telemetry.audit import new_decision_id


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_decision_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_consecutive_ids_share_no_prefix_and_count_nothing() -> None:
    ids = [new_decision_id() for _ in range(1_000)]
    assert len({i[:8] for i in ids}) > 990  # 32 random bits each: not one process's prefix
    gaps = [int(b, 16) - int(a, 16) for a, b in itertools.pairwise(ids)]
    assert sum(1 for gap in gaps if 0 < gap < 1 << 32) < 5  # not a counter
