"""The CEL engine behind a small interface: ``compile(expr) -> Program``, ``evaluate -> bool``.

cel-python is the engine. Its compiled runner (expressions transpiled to Python closures) is
about six times faster than its interpreter, and the first ``celpy.Environment`` created fixes
a process-wide parser, so the compiled environment is created at import, before anything else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import celpy
from celpy import celtypes, evaluation
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from lark import Token, Tree

from gateway.errors import PolicyEvalError

# cel-python logs every evaluation error with a traceback; errors are ours to report.
logging.getLogger("celpy").setLevel(logging.CRITICAL)
logging.getLogger("Evaluator").setLevel(logging.CRITICAL)

_ENV = celpy.Environment(runner_class=celpy.CompiledRunner)

#: The names a rule may read (DESIGN.md, "CEL context").
CONTEXT_VARIABLES = frozenset({"tool", "args", "agent", "session", "request", "now"})
_MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTIONS = (
    frozenset(name for name in evaluation.base_functions if name[0].isalpha()) | _MACROS | {"dyn"}
)


class CelCompileError(Exception):
    """An expression that does not parse, or reads a name the context does not have."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(message)


class Program(Protocol):
    """A compiled condition."""

    @property
    def source(self) -> str: ...

    @property
    def variables(self) -> frozenset[str]: ...

    def evaluate(self, activation: Mapping[str, Any]) -> bool: ...


class Engine(Protocol):
    """Compiles expressions and converts plain JSON-like values into its own value types."""

    name: str

    def compile(self, expr: str) -> Program: ...

    def convert(self, value: Any) -> Any: ...

    def timestamp(self, when: datetime) -> Any: ...


@dataclass(frozen=True, slots=True)
class _CelpyProgram:
    source: str
    variables: frozenset[str]
    runner: Any

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        try:
            value = self.runner.evaluate(activation)
        except CELEvalError as exc:
            raise _eval_error(self.source, exc) from None
        except (
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            ZeroDivisionError,
            RecursionError,
        ) as exc:
            raise PolicyEvalError("cel.error", self.source, type(exc).__name__) from None
        if isinstance(value, CELEvalError):
            raise _eval_error(self.source, value)
        if not isinstance(value, celtypes.BoolType | bool):
            kind = type(value).__name__.removesuffix("Type").lower()
            raise PolicyEvalError("cel.not_bool", self.source, f"result is {kind}, not bool")
        return bool(value)


def _innermost(exc: BaseException) -> tuple[str, str]:
    """Walk cel-python's nested error args down to (message, python error class name)."""
    args: tuple[Any, ...] = exc.args
    message, kind = "evaluation error", ""
    while args:
        if isinstance(args[0], str):
            message = args[0]
        if len(args) > 1 and isinstance(args[1], type):
            kind = args[1].__name__
        nested = args[2] if len(args) > 2 else ()
        if not isinstance(nested, tuple) or nested == args:
            break
        args = nested
    return message, kind


def _eval_error(source: str, exc: BaseException) -> PolicyEvalError:
    message, kind = _innermost(exc)
    if kind in {"KeyError", "IndexError"} or ("no such" in message and "member" in message):
        return PolicyEvalError("cel.missing_key", source, message)
    if kind in {"TypeError", "AttributeError"} or "overload" in message:
        return PolicyEvalError("cel.type_error", source, message)
    if kind == "ZeroDivisionError" or "divide" in message:
        return PolicyEvalError("cel.arithmetic", source, message)
    return PolicyEvalError("cel.error", source, message)


def _names(tree: Tree[Token]) -> tuple[set[str], set[str], set[str]]:
    """Free identifiers, macro-bound identifiers and called function names of a parse tree."""
    idents: set[str] = set()
    bound: set[str] = set()
    calls: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "ident":
            idents.add(str(node.children[0]))
        elif node.data == "ident_arg":
            calls.add(str(node.children[0]))
        elif node.data == "member_dot_arg":
            method = str(node.children[1])
            calls.add(method)
            if method in _BINDING_MACROS and len(node.children) > 2:
                bound |= _first_ident(node.children[2])
    return idents - bound, bound, calls


def _first_ident(exprlist: Any) -> set[str]:
    if not isinstance(exprlist, Tree) or not exprlist.children:
        return set()
    first = exprlist.children[0]
    if not isinstance(first, Tree):
        return set()
    found = [str(n.children[0]) for n in first.iter_subtrees() if n.data == "ident"]
    return set(found[:1])


# cel-python 0.5's transpiler emits `has(...)` as a Python bool, which its own `&&`, `||` and
# `!` reject ("no such overload"): `!has(args.x)` always errors and `has(args.x) && ...`
# errors whenever the key is absent. Wrapping the emitted test in BoolType restores CEL.
_HAS_LINE = re.compile(
    r"^(ex_\d+ = lambda activation: )"
    r"(not isinstance\(celpy\.evaluation\.result\(activation, ex_\d+_h\), CELEvalError\))$",
    re.MULTILINE,
)


def _fix_has(runner: Any) -> None:
    source = runner.tp.source_text
    fixed = _HAS_LINE.sub(r"\1celpy.celtypes.BoolType(\2)", source)
    if fixed != source:
        runner.tp.source_text = fixed
        runner.tp.executable_code = compile(fixed, "<cel>", "exec")


def _to_cel(value: Any) -> Any:
    """JSON-like Python values to cel-python's types.

    Same result as ``celpy.adapter.json_to_cel`` for JSON values, dispatched on the exact
    type: the library's version tests ``isinstance`` against ``typing`` generics, which was a
    fifth of ``decide()``'s time.
    """
    kind = type(value)
    if kind is str:
        return celtypes.StringType(value)
    if kind is dict:
        return celtypes.MapType({_to_cel(k): _to_cel(v) for k, v in value.items()})
    if kind is bool:
        return celtypes.BoolType(value)
    if kind is int:
        return celtypes.IntType(value)
    if kind is float:
        return celtypes.DoubleType(value)
    if kind is list or kind is tuple:
        return celtypes.ListType([_to_cel(item) for item in value])
    if value is None:
        return None
    return json_to_cel(value)  # anything else (subclasses, datetimes): the library decides


class CelPythonEngine:
    """cel-python with its compiled runner."""

    name = "cel-python"

    def compile(self, expr: str) -> Program:
        try:
            tree = _ENV.compile(expr)
        except CELParseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
            line = getattr(exc, "line", None) or 1
            column = getattr(exc, "column", None) or 1
            raise CelCompileError(f"does not parse near `{first.strip()}`", line, column) from None
        free, _, calls = _names(tree)
        unknown_vars = sorted(free - CONTEXT_VARIABLES)
        if unknown_vars:
            declared = ", ".join(sorted(CONTEXT_VARIABLES))
            raise CelCompileError(f"undeclared variable {unknown_vars[0]!r} (declared: {declared})")
        unknown_calls = sorted(calls - _FUNCTIONS)
        if unknown_calls:
            raise CelCompileError(f"unknown function {unknown_calls[0]!r}")
        runner = _ENV.program(tree)
        _fix_has(runner)
        return _CelpyProgram(expr, frozenset(free), runner)

    def convert(self, value: Any) -> Any:
        return _to_cel(value)

    def timestamp(self, when: datetime) -> Any:
        return celtypes.TimestampType(when)


DEFAULT_ENGINE: Engine = CelPythonEngine()
