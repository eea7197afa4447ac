"""Google's CEL (``cel-expr-python``, the C++ cel-cpp runtime) behind the engine interface.

Optional (``pip install 'celgate[cel-google]'``). Chosen over the Rust-backed
``common-expression-language``, which counts ``size()`` of a string in bytes where the CEL spec
says code points (``size("é") == 2`` there). Expressions are parsed and type-checked against
the context variables, all declared ``dyn`` except ``now`` (a timestamp), so an undeclared
name or an unknown function is a load error, as with cel-python. Values go in as plain Python
(dicts, lists, str, int, float, bool, None, datetime): no conversion step per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cel_expr_python import cel  # type: ignore[import-untyped,import-not-found,unused-ignore]

from gateway.errors import PolicyEvalError
from gateway.policy.cel import CONTEXT_VARIABLES, CelCompileError, Program, pattern_problem

_INT64 = (-(2**63), 2**63 - 1)
_WHERE = re.compile(r"<input>:(\d+):(\d+): ([^\n]*)")
# cel-cpp's error status text, mapped onto the error codes cel-python's engine gives.
_ERROR_CODES = (
    (("Key not found", "no_such_field", "No such key", "Index error"), "cel.missing_key"),
    (("divide by zero", "modulus by zero", "overflow"), "cel.arithmetic"),
    (("No matching overloads", "SELECT to non-message", "Type conversion"), "cel.type_error"),
    (("conversion failed",), "cel.bad_value"),
)


def _env() -> Any:
    variables = {name: cel.Type.DYN for name in CONTEXT_VARIABLES}
    variables["now"] = cel.Type.TIMESTAMP
    return cel.NewEnv(variables=variables)


_ENV = _env()


def _code(message: str) -> str:
    for needles, code in _ERROR_CODES:
        if any(n in message for n in needles):
            return code
    return "cel.error"


@dataclass(frozen=True, slots=True)
class _GoogleProgram:
    source: str
    variables: frozenset[str]
    expression: Any

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        try:
            value = self.expression.eval(data=activation)
        except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
            raise PolicyEvalError("cel.bad_value", self.source, str(exc)) from None
        kind = value.type().name()
        if kind == "BOOL":
            return bool(value.value())
        if kind == "ERROR":
            message = str(value.value())
            raise PolicyEvalError(_code(message), self.source, message)
        raise PolicyEvalError("cel.not_bool", self.source, f"result is {kind.lower()}, not bool")


def _referenced(expr: str) -> frozenset[str]:
    """Context variables the expression may read (a superset is harmless: one more dict)."""
    return frozenset(name for name in CONTEXT_VARIABLES if re.search(rf"\b{name}\b", expr))


class CelGoogleEngine:
    """cel-expr-python: parse, type-check and plan once; evaluate in C++."""

    name = "cel-google"

    def compile(self, expr: str) -> Program:
        try:
            expression = _ENV.compile(expr)
        except (RuntimeError, ValueError, TypeError, RecursionError) as exc:
            found = _WHERE.search(str(exc))
            if found is None:
                first = str(exc).strip().splitlines()
                raise CelCompileError(first[0] if first else type(exc).__name__) from None
            line, column, message = int(found[1]), int(found[2]), found[3]
            if line < 1:  # cel-cpp's own limits (recursion depth) have no position
                raise CelCompileError(message.removeprefix("ERROR: ")) from None
            raise CelCompileError(message.removeprefix("Syntax error: "), line, column) from None
        variables = _referenced(expr)
        kind = expression.return_type().name()
        # Only a constant is refused for its type: cel-python cannot type `args.n + 1` before
        # a call, and both engines must accept the same rule files.
        if not variables and kind not in ("BOOL", "DYN"):
            raise CelCompileError(f"always fails (cel.not_bool: result is {kind.lower()})")
        bad_pattern = pattern_problem(expr)
        if bad_pattern is not None:
            raise CelCompileError(bad_pattern)
        return _GoogleProgram(expr, variables, expression)

    def convert(self, value: Any) -> Any:
        _check_values(value)
        return value

    def timestamp(self, when: datetime) -> Any:
        return when


def _check_values(value: Any, depth: int = 0) -> None:
    """What cel-expr-python cannot hold as it came is no CEL value (cel.bad_value): an int
    past 64 bits, and a string or a key holding U+0000, which its C++ strings cut there (the
    rule read ``"ls"`` where the upstream got ``"ls\\x00; rm -rf /"``: red-team wave 44)."""
    if depth > 200:
        raise RecursionError("arguments nested too deeply")
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise OverflowError(f"{value} does not fit a 64-bit CEL int")
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a string holds U+0000")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise ValueError("a key holds U+0000")
            _check_values(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_values(item, depth + 1)
