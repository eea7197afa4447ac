"""Policy tests beside the rules (``*_test.yaml``), run by ``celgate test rules/``
(gateway/cli/policy.py prints the results).

Each file holds ``cases``: a call (tool, server, args, who calls, tool risk/kind, time) and what
the policy must answer (effect, and optionally rule, error code, words of the reason). The
policy under test is the folder the file sits in, or the files its ``policy:`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, Problem, SourceLocation
from gateway.located import Node, parse_file
from gateway.policy import Call, CompiledPolicy, Decision, Identity, decide, load_policy
from gateway.policy.decide import as_utc
from gateway.policy.files import holds_rules
from gateway.policy.loader import TEST_SUFFIXES
from gateway.policy.model import KINDS, RISKS
from gateway.policy.risk import tool_info
from gateway.policy.schema import Fields

_CASE = {
    "name", "tool", "server", "args", "grant", "agent", "roles", "attrs", "session",
    "risk", "kind", "annotations", "now", "expect",
}  # fmt: skip
_EXPECT = {"effect", "rule", "error", "reason_contains"}
DEFAULT_NOW = "2026-01-05T10:00:00+00:00"  # a Monday morning, so time rules are predictable


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    where: SourceLocation
    call: Call  # its ``info`` is classified against the policy when the case runs
    now: datetime
    expect: dict[str, Any]
    #: The tool as the case gives it: its annotations, and a ``risk`` or ``kind`` that
    #: replaces what the gateway's classification would say.
    definition: dict[str, Any]
    risk: str | None = None
    kind: str | None = None


def find_test_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            named = (p for p in sorted(path.rglob("*")) if p.name.lower().endswith(TEST_SUFFIXES))
            out.extend(p for p in named if not holds_rules(p))  # (loaded as rules instead)
        elif path.name.lower().endswith(TEST_SUFFIXES):
            out.append(path)
    return out


def _case(node: Node, index: int, problems: list[Problem]) -> Case | None:
    fields = Fields(node, f"cases[{index}]", problems)
    if not fields.ok:
        return None
    fields.check_known(_CASE)
    tool = fields.string("tool", required=True)
    expect = fields.get("expect")
    if expect is None or not isinstance(expect.value, dict):
        problems.append(Problem(node.where, f"cases[{index}].expect", "missing (effect, rule...)"))
        return None
    Fields(expect, f"cases[{index}].expect", problems).check_known(_EXPECT)
    plain = node.plain()
    before = len(problems)

    def bad(name: str, message: str) -> None:
        found = fields.get(name)
        problems.append(Problem((found or node).where, f"cases[{index}].{name}", message))

    if not set(expect.value) & _EXPECT:  # an empty expect checked nothing, and passed
        bad("expect", f"says nothing to check (give one of {', '.join(sorted(_EXPECT))})")
    roles = plain.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        bad("roles", "must be a list of names (roles: admin was read as a, d, m, i, n)")
    attrs = plain.get("attrs") or {}
    if not isinstance(attrs, dict):
        bad("attrs", "must be a mapping")
    args = plain.get("args") or {}
    if not isinstance(args, dict):
        bad("args", "must be a mapping")
    for name, known in (("risk", RISKS), ("kind", KINDS)):
        value = plain.get(name)
        if value is not None and value not in known:
            bad(name, f"unknown value {value!r} (use {' | '.join(known)})")
    now = _time(plain.get("now", DEFAULT_NOW))
    if now is None:
        bad("now", "must be an ISO 8601 time (2026-01-05T10:00:00+00:00)")
    if tool is None or now is None or len(problems) > before:
        return None
    grant = str(plain.get("grant", "anonymous"))
    identity = Identity(
        grant=grant,
        agent=str(plain.get("agent", grant)),
        roles=tuple(roles),
        attrs=dict(attrs),
    )
    call = Call(
        tool=tool,
        server=plain.get("server"),
        args=args,
        identity=identity,
        session=plain.get("session"),
    )
    name = str(plain.get("name", f"case {index + 1}"))
    annotations = plain.get("annotations")
    definition = {"name": tool, "annotations": annotations if isinstance(annotations, dict) else {}}
    risk, kind = plain.get("risk"), plain.get("kind")
    return Case(
        name,
        node.where,
        call,
        as_utc(now),  # without an offset: UTC, as `decide --now` and the gateway read it
        expect.plain(),
        definition,
        None if risk is None else str(risk),
        None if kind is None else str(kind),
    )


def _time(value: Any) -> datetime | None:
    """The case's time; None when it is none, or none in UTC (past year 9999 there)."""
    try:
        found = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        as_utc(found)  # (YAML reads an unquoted timestamp as a datetime)
    except (ValueError, OverflowError):
        return None
    return found


def load_cases(path: Path) -> tuple[list[Case], list[str] | None, list[list[Problem]]]:
    """The cases of one test file that load, the policy paths it names (None: its folder),
    and the problems of each case that does not load. A problem of the file itself (it does
    not parse, an unknown key at its top) is ``ConfigError``; a broken case is one failure
    of its own, and the others still run: one case's typo counted the whole file as one
    failure, a real regression beside it neither run nor named (red-team wave 37)."""
    problems: list[Problem] = []
    root = parse_file(path, problems)
    cases: list[Case] = []
    broken: list[list[Problem]] = []
    policy: list[str] | None = None
    if root is not None:
        top = Fields(root, "", problems)
        top.check_known({"cases", "policy", "description"})
        named = top.get("policy")
        if named is not None:
            raw = named.plain()
            policy = [str(path.parent / p) for p in (raw if isinstance(raw, list) else [raw])]
        items = top.get("cases")
        for i, item in enumerate(items.value if items and isinstance(items.value, list) else []):
            own: list[Problem] = []
            case = _case(item, i, own)
            if own:
                broken.append(own)
            elif case is not None:
                cases.append(case)
    if problems:
        raise ConfigError(problems)
    return cases, policy, broken


def failure(case: Case, decision: Decision) -> str | None:
    want = case.expect
    got = {"effect": decision.effect, "rule": decision.rule, "error": decision.error}
    for key in ("effect", "rule", "error"):
        if key in want and str(want[key]) != str(got[key]):
            return f"expected {key} {want[key]!r}, got {got[key]!r} ({decision.reason})"
    words = want.get("reason_contains")
    if words is not None and str(words) not in decision.reason:
        return f"expected the reason to contain {words!r}, got {decision.reason!r}"
    return None


def run_file(path: Path, cache: dict[tuple[str, ...], CompiledPolicy]) -> tuple[int, list[str]]:
    """Run one test file: (cases run or broken, failure lines)."""
    cases, named, broken = load_cases(path)
    policy_paths = named or [str(path.parent)]
    key = tuple(policy_paths)
    if key not in cache:
        cache[key] = load_policy(policy_paths)
    policy = cache[key]
    failures = [
        "; ".join(str(p) for p in sorted(own, key=lambda p: (p.where.line, p.field)))
        for own in broken
    ]
    for case in cases:
        server = case.call.server or ""
        info = tool_info(policy, server, case.definition, risk=case.risk, kind=case.kind)
        why = failure(case, decide(policy, replace(case.call, info=info), case.now))
        if why is not None:
            failures.append(f"{case.where}: {case.name}: {why}")
    return len(cases) + len(broken), failures
