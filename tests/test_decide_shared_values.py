"""``agent`` and ``tool`` are converted once and kept across calls: never stale, never shared
between callers. And cel-python's integers behave as before the fast ``IntType`` path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.policy import Call, CompiledPolicy, Identity, decide, load_policy
from gateway.policy.model import ToolInfo

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

POLICY = """
version: "1"
default: deny
tools:
  report:
    rules:
      - when: 'agent.attrs.team == "finance" && tool.risk == "low"'
        action: allow
  count:
    rules:
      - when: 'args.n + 1 > 9223372036854775806'
        action: allow
      - when: 'size(args.s) == 3 && args.n == 3'
        action: allow
"""


@pytest.fixture()
def policy(tmp_path: Path) -> CompiledPolicy:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return load_policy([path])


def test_a_new_identity_is_seen_with_its_own_attributes(policy: CompiledPolicy) -> None:
    finance = Identity(grant="g", agent="a", attrs={"team": "finance"})
    low = ToolInfo(risk="low")
    first = decide(policy, Call(tool="report", identity=finance, info=low), NOW)
    again = decide(policy, Call(tool="report", identity=finance, info=low), NOW)
    assert first.effect == again.effect == "allow"
    # The same grant after a reload: a new Identity object with other attributes.
    moved = Identity(grant="g", agent="a", attrs={"team": "sales"})
    assert decide(policy, Call(tool="report", identity=moved, info=low), NOW).effect == "deny"
    # And new tool information (a catalog refresh) is seen too.
    high = ToolInfo(risk="high")
    assert decide(policy, Call(tool="report", identity=finance, info=high), NOW).effect == "deny"
    assert decide(policy, Call(tool="report", identity=finance, info=low), NOW).effect == "allow"


def test_integers_keep_their_range_and_types(policy: CompiledPolicy) -> None:
    ok = decide(policy, Call(tool="count", args={"n": 3, "s": "abc"}), NOW)
    assert ok.effect == "allow"
    overflow = decide(policy, Call(tool="count", args={"n": 9223372036854775807, "s": ""}), NOW)
    assert overflow.effect == "deny"
    assert overflow.error is not None and overflow.error.startswith("cel.")
    too_big = decide(policy, Call(tool="count", args={"n": 2**64, "s": ""}), NOW)
    assert too_big.effect == "deny" and too_big.error == "cel.bad_value"
