"""Properties of decide(): it never raises on arbitrary JSON arguments, and a default-deny
policy never allows a tool it does not name."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celpy.adapter import json_to_cel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy import Call, CompiledPolicy, Identity, decide, load_policy
from gateway.policy.cel_runtime import to_cel

NOW = datetime(2026, 3, 14, 13, 30, tzinfo=UTC)

# Rules that read args in many ways, so arbitrary arguments reach every kind of evaluation.
_RULES = """
default: deny
tools:
  t:
    rules:
      - {id: has, when: 'has(args.a) && args.a == 1', action: allow}
      - {id: size, when: 'size(args.s) > 3', action: require_approval}
      - {id: nested, when: 'args.x.y.z in ["a", "b"]', action: allow}
      - {id: list, when: 'args.l.exists(i, i > 2)', action: allow}
      - {id: regex, when: 'args.s.matches("^[a-z]+$")', action: allow}
      - {id: keys, when: '"k" in args', action: deny}
      - {id: raw, when: 'args.a', action: allow}
    action: deny
"""

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond int64 too
    | st.floats(allow_nan=False)
    | st.text()  # any unicode, surrogates excluded by hypothesis' default alphabet
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)
_args = st.dictionaries(st.sampled_from(["a", "s", "x", "l", "k", "other"]) | st.text(), _json)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    path = tmp_path_factory.mktemp("p") / "rules.yaml"
    path.write_text(_RULES, encoding="utf-8")
    return load_policy([path])


class TestNeverRaises:
    """Untrusted arguments can only make decide() deny with an error code, never raise."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(args=_args)
    def test_arbitrary_json(self, policy: CompiledPolicy, args: dict[str, object]) -> None:
        decision = decide(policy, Call(tool="t", args=args), NOW)
        assert decision.effect in ("allow", "deny", "require_approval")
        if decision.error is not None:
            assert decision.effect == "deny"
            assert decision.error.startswith("cel.")
            assert decision.expression is not None

    @given(depth=st.integers(min_value=1, max_value=5000), leaf=_scalars)
    @settings(max_examples=30, deadline=None)
    def test_deep_nesting(self, policy: CompiledPolicy, depth: int, leaf: object) -> None:
        value: object = leaf
        for _ in range(depth):
            value = {"y": value}
        decision = decide(policy, Call(tool="t", args={"x": value}), NOW)
        assert decision.effect in ("allow", "deny", "require_approval")

    def test_very_deep_nesting_fails_closed(self, policy: CompiledPolicy) -> None:
        value: object = 1
        for _ in range(20_000):
            value = [value]
        decision = decide(policy, Call(tool="t", args={"a": value}), NOW)
        assert (decision.effect, decision.error) == ("deny", "cel.bad_value")


_names = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12)


class TestDefaultDeny:
    """With default deny, only tools an entry names (exactly or by glob) can be allowed."""

    @settings(max_examples=150, deadline=None)
    @given(named=st.lists(_names, min_size=1, max_size=6, unique=True), tool=_names)
    def test_unnamed_tool_denied(
        self, tmp_path_factory: pytest.TempPathFactory, named: list[str], tool: str
    ) -> None:
        entries = "\n".join(f'  "{name}": {{action: allow}}' for name in named)
        path: Path = tmp_path_factory.mktemp("d") / "rules.yaml"
        path.write_text(f"default: deny\ntools:\n{entries}\n", encoding="utf-8")
        policy = load_policy([path])
        decision = decide(policy, Call(tool=tool, args={"a": 1}), NOW)
        if tool in named:
            assert decision.effect == "allow"
        else:
            assert (decision.effect, decision.rule) == ("deny", "default")
            assert decision.limits == ()

    @settings(max_examples=150, deadline=None)
    @given(prefix=_names, tool=_names, server=st.none() | _names)
    def test_glob_allows_only_its_matches(
        self, tmp_path_factory: pytest.TempPathFactory, prefix: str, tool: str, server: str | None
    ) -> None:
        path: Path = tmp_path_factory.mktemp("g") / "rules.yaml"
        path.write_text(f'default: deny\ntools:\n  "{prefix}*": {{action: allow}}\n')
        decision = decide(load_policy([path]), Call(tool=tool, server=server), NOW)
        assert decision.allowed == tool.startswith(prefix)

    @settings(max_examples=100, deadline=None)
    @given(tool=_names, roles=st.lists(_names, max_size=3))
    def test_server_qualified_entry_needs_its_server(
        self, tmp_path_factory: pytest.TempPathFactory, tool: str, roles: list[str]
    ) -> None:
        path: Path = tmp_path_factory.mktemp("s") / "rules.yaml"
        path.write_text(f'default: deny\ntools:\n  "srv/{tool}": {{action: allow}}\n')
        policy = load_policy([path])
        ident = Identity(roles=tuple(roles))
        assert decide(policy, Call(tool=tool, server="srv", identity=ident), NOW).allowed
        assert not decide(policy, Call(tool=tool, server="other", identity=ident), NOW).allowed
        assert not decide(policy, Call(tool=tool, identity=ident), NOW).allowed


def _same_cel(ours: object, theirs: object) -> None:
    assert type(ours) is type(theirs)
    assert ours == theirs
    if isinstance(ours, dict) and isinstance(theirs, dict):
        assert [type(k) for k in ours] == [type(k) for k in theirs]
        for key in ours:
            _same_cel(ours[key], theirs[key])
    elif isinstance(ours, list) and isinstance(theirs, list):
        for a, b in zip(ours, theirs, strict=True):
            _same_cel(a, b)


_in_range = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        _in_range,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arguments_become_the_cel_values_cel_python_makes(value: object) -> None:
    """``to_cel`` skips the library's type checks; the values and their types stay its own."""
    _same_cel(to_cel(value), json_to_cel(value))
