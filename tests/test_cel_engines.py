"""The policy corpus (``tests/cases/*.yaml``) on the optional faster CEL engine, Google's
cel-expr-python: the same rules, calls and expected Decisions as on cel-python. Skipped when
the ``cel-google`` extra is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.policy import decide, load_policy
from gateway.policy.cel import CelCompileError
from tests.test_policy_cases import CASES, _call, _check

cel_google = pytest.importorskip("gateway.policy.cel_google", exc_type=ImportError)
ENGINE = cel_google.CelGoogleEngine()

#: Where cel-expr-python decides differently, and why. These keep cel-python the default.
DIFFERENCES: dict[str, dict[str, Any]] = {
    # cel-cpp follows the current spec's heterogeneous numeric equality (1 == 1.0 is true);
    # cel-python 0.5 says no overload. A rule written against one engine can flip on the other.
    "cel_errors/int-vs-double-equality": {"effect": "allow", "rule": "r", "error": None},
    # A bad timestamp string: cel-python's code is an artifact (the case says so); cel-cpp's
    # "conversion failed" is reported as cel.bad_value. Denied either way.
    "time/bad-timestamp-arg-denies": {"error": "cel.bad_value"},
    # cel-cpp's strings end at U+0000: such a value is refused (cel.bad_value) rather than
    # read cut short. Denied either way.
    "cel_errors/nul-in-a-string-is-read-whole": {"rule": "plain", "error": "cel.bad_value"},
    # cel-cpp: a bool equals no number (false, by heterogeneous equality); cel-python has no
    # overload (a deny rule on 0 must not miss false there). A tool's inputSchema types the
    # argument first on both.
    "cel_errors/bool-against-a-number-denies": {
        "effect": "allow",
        "rule": "default",
        "error": None,
    },
    # cel-cpp reads a bool index as a missing element ("Index error: expected integer
    # type"); cel-python has no overload. Denied either way.
    "cel_errors/list-indexed-by-a-bool-denies": {"error": "cel.missing_key"},
    # cel-cpp has int() of a bool (1 for true); cel-python refuses it, as it refuses every
    # number of a bool (a bool is no number there).
    "cel_errors/int-of-a-bool-denies": {"effect": "allow", "rule": "r", "error": None},
}


@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
def test_case(
    name: str, case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expect = {**case["expect"], **DIFFERENCES.get(name, {})}
    expect = {k: v for k, v in expect.items() if v is not None}
    rules = f"{case['name']}.yaml"
    Path(rules).write_text(case["rules"], encoding="utf-8")
    policy = load_policy([rules], engine=ENGINE)
    call, now = _call(case["call"])
    decision = decide(policy, call, now, engine=ENGINE)
    _check(decision, expect)


def test_differences_name_real_cases() -> None:
    assert set(DIFFERENCES) <= {name for name, _ in CASES}


class TestGoogleEngine:
    """Where engines are known to differ, this one follows the CEL spec."""

    def test_size_counts_code_points(self) -> None:
        program = ENGINE.compile("size(args.s) == 2 && args.s.size() == 2")
        assert program.evaluate({"args": {"s": "é!"}}) is True

    def test_undeclared_variable_is_a_compile_error(self) -> None:
        with pytest.raises(CelCompileError):
            ENGINE.compile("secrets.key == 1")

    @pytest.mark.parametrize("expr", ['has(.args.cmd) && .args.cmd == "rm"', ".size(args) > 0"])
    def test_a_leading_dot_is_refused_as_on_cel_python(self, expr: str) -> None:
        """cel-cpp reads ``.args`` as ``args``; cel-python never bound it. One rule file
        must mean the same on both engines: refused by both."""
        with pytest.raises(CelCompileError, match="leading dot"):
            ENGINE.compile(expr)

    def test_syntax_error_has_a_position(self) -> None:
        with pytest.raises(CelCompileError) as info:
            ENGINE.compile("args.x ==\n  (")
        assert info.value.line == 2
