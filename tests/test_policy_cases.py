"""The policy corpus: ``tests/cases/*.yaml``, each case a rule file, a call and the Decision
expected from it, run by one parametrised test.

A case's ``rules`` text is written to ``<case name>.yaml`` in a temporary folder and loaded by
that relative name, so a rule without an id is expected as ``<case name>.yaml:LINE`` (line 1 is
the first line of the ``rules`` text). Every case asserts effect, rule, error code and limits;
``reason``, ``reason_contains``, ``expression``, ``entry``, ``approval`` and ``shadow`` are
asserted when given (``approval`` and ``shadow`` also when absent: none expected).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy import Call, Decision, Identity, ToolInfo, decide, load_policy
from gateway.policy.visibility import visible

CASES_DIR = Path(__file__).parent / "cases"
DEFAULT_NOW = "2026-03-14T13:30:00+00:00"  # a Saturday
_CALL_KEYS = {"tool", "server", "args", "grant", "agent", "roles", "attrs", "session", "ip"}
_CALL_KEYS |= {"risk", "kind", "annotations", "now"}
_EXPECT_KEYS = {"effect", "rule", "reason", "reason_contains", "error", "expression", "entry"}
_EXPECT_KEYS |= {"limits", "approval", "shadow"}


def _all_cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]:
            out.append((f"{path.stem}/{case['name']}", case))
    return out


CASES = _all_cases()


def _call(spec: dict[str, Any]) -> tuple[Call, datetime]:
    unknown = set(spec) - _CALL_KEYS
    assert not unknown, f"unknown call keys {unknown}"
    grant = spec.get("grant", "anonymous")
    identity = Identity(
        grant=grant,
        agent=spec.get("agent", grant),
        roles=tuple(spec.get("roles", ())),
        attrs=spec.get("attrs", {}),
    )
    info = ToolInfo(
        risk=spec.get("risk", "unknown"),
        kind=spec.get("kind", "unknown"),
        annotations=spec.get("annotations", {}),
    )
    call = Call(
        tool=spec["tool"],
        args=spec.get("args", {}),
        server=spec.get("server"),
        identity=identity,
        session=spec.get("session"),
        client_ip=spec.get("ip"),
        info=info,
    )
    return call, datetime.fromisoformat(str(spec.get("now", DEFAULT_NOW)))


def _limits(decision: Decision) -> list[dict[str, Any]]:
    return [
        {"counter": lim.counter, "scope": lim.scope, "key": lim.key, "max": lim.max}
        | {"window": lim.window, "failure_mode": lim.failure_mode}
        for lim in decision.limits
    ]


def _expected_limits(expect: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"failure_mode": "closed"} | lim for lim in expect.get("limits", [])]


def _check(decision: Decision, expect: dict[str, Any]) -> None:
    unknown = set(expect) - _EXPECT_KEYS
    assert not unknown, f"unknown expect keys {unknown}"
    assert decision.effect == expect["effect"], decision.to_dict()
    assert decision.rule == expect["rule"], decision.to_dict()
    assert decision.error == expect.get("error"), decision.to_dict()
    assert _limits(decision) == _expected_limits(expect)
    if "reason" in expect:
        assert decision.reason == expect["reason"]
    if "reason_contains" in expect:
        assert expect["reason_contains"] in decision.reason
    if "expression" in expect:
        assert decision.expression == expect["expression"]
    if "entry" in expect:
        assert decision.entry == expect["entry"]
    approval = decision.approval
    got = None if approval is None else {"mode": approval.mode, "timeout": approval.timeout}
    assert got == expect.get("approval")
    shadow = [
        {"rule": s.rule, "would_effect": s.would_effect, "error": s.error} for s in decision.shadow
    ]
    assert shadow == [{"error": None} | s for s in expect.get("shadow", [])]


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_case(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"{case['name']}.yaml"
    Path(name).write_text(case["rules"], encoding="utf-8")
    policy = load_policy([name])
    call, now = _call(case["call"])
    decision = decide(policy, call, now)
    _check(decision, case["expect"])
    if decision.effect != "deny":  # a tool a call may reach is listed (tools/list)
        assert visible(policy, call, now)
    assert decision.revision == policy.revision
    assert decision.decided_at == now


class TestCorpus:
    """The corpus itself: large enough, names unique (they name the temporary rule files)."""

    def test_size(self) -> None:
        assert len(CASES) >= 60

    def test_names_unique(self) -> None:
        names = [case["name"] for _, case in CASES]
        assert len(names) == len(set(names))

    def test_every_effect_and_error_code_is_covered(self) -> None:
        effects = {case["expect"]["effect"] for _, case in CASES}
        errors = {case["expect"].get("error") for _, case in CASES}
        assert effects == {"allow", "deny", "require_approval"}
        assert {"cel.missing_key", "cel.type_error", "cel.not_bool"} <= errors
