"""A condition's work is bounded whatever the caller sends: a rule fails (and its call is
denied) rather than hold the event loop, and every other call with it.

Two bounds: the items a value may hold to become CEL (``MAX_CEL_ITEMS``, every list and object
counted, nested ones too) and the iterations one evaluation's macros may run
(``MAX_ITERATIONS``, nested macros counted together).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import Call, CompiledPolicy, Identity, decide, load_policy
from gateway.policy.cel_runtime import MAX_CEL_ITEMS, MAX_ITERATIONS

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RULES = """
default: deny
tools:
  pairs:
    rules:
      - {id: distinct, when: 'args.l.all(x, args.l.all(y, x != y || x == y))', action: allow}
  count:
    rules:
      - {id: some, when: 'size(args.l) > 0', action: allow}
  nested:
    rules:
      - {id: deep, when: 'args.m.exists(k, args.m[k].exists(v, v == 1))', action: allow}
  constant:
    rules:
      - {id: fixed, when: '[1, 2, 3].all(x, x > 0) && args.ok', action: allow}
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    path: Path = tmp_path_factory.mktemp("cel-bounds") / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return load_policy([path])


def decided(policy: CompiledPolicy, tool: str, **args: Any) -> tuple[str, str | None]:
    call = Call(tool=tool, server="up", args=args, identity=Identity("bot", "bot"))
    decision = decide(policy, call, NOW)
    return decision.effect, decision.error


def test_nested_macros_within_the_budget_run(policy: CompiledPolicy) -> None:
    side = int(MAX_ITERATIONS**0.5) - 1  # side + side * side iterations: within
    assert decided(policy, "pairs", l=list(range(side))) == ("allow", None)


def test_nested_macros_past_the_budget_deny(policy: CompiledPolicy) -> None:
    side = int(MAX_ITERATIONS**0.5) + 1
    assert decided(policy, "pairs", l=list(range(side))) == ("deny", "cel.too_costly")
    # However large the list: the work stops at the budget.
    assert decided(policy, "pairs", l=list(range(40_000))) == ("deny", "cel.too_costly")


def test_macros_over_objects_count_every_level(policy: CompiledPolicy) -> None:
    small = {str(i): [0, 0, 1] for i in range(10)}
    assert decided(policy, "nested", m=small) == ("allow", None)
    # exists() stops at the first match: no match makes it walk everything.
    wide = {str(i): [0] * 100 for i in range(200)}
    assert decided(policy, "nested", m=wide) == ("deny", "cel.too_costly")


def test_a_value_past_the_item_bound_is_not_read(policy: CompiledPolicy) -> None:
    assert decided(policy, "count", l=[0] * 1000) == ("allow", None)
    assert decided(policy, "count", l=[0] * (MAX_CEL_ITEMS + 1)) == ("deny", "cel.bad_value")
    nested = [[0] * 1000 for _ in range(MAX_CEL_ITEMS // 1000)]  # the inner items count too
    assert decided(policy, "count", l=nested) == ("deny", "cel.bad_value")


def test_each_evaluation_starts_with_the_whole_budget(policy: CompiledPolicy) -> None:
    """One costly call does not leave the next with less."""
    assert decided(policy, "pairs", l=list(range(500))) == ("deny", "cel.too_costly")
    assert decided(policy, "constant", ok=True) == ("allow", None)
    side = int(MAX_ITERATIONS**0.5) - 1
    assert decided(policy, "pairs", l=list(range(side))) == ("allow", None)
