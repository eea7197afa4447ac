"""The CEL engine behind a small interface: ``compile(expr) -> Program``, ``evaluate -> bool``.

cel-python is the default engine: ``cel_checks`` holds what compiling checks on its parse
tree, ``cel_runtime`` its compiled runner as we run it; ``cel_google`` is the other engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from celpy import celtypes

from gateway.errors import PolicyEvalError
from gateway.policy.cel_checks import (
    CONTEXT_VARIABLES,
    MAX_CEL_CHARS,
    MAX_CEL_NESTING,
    TOO_DEEP,
    CelCompileError,
    args_fields,
    cel_shape_problem,
    check_constants,
    free_variables,
    parse,
    pattern_problem,
)
from gateway.policy.cel_runtime import ENV, CelpyProgram, fix_has, runner, to_cel

__all__ = [
    "CONTEXT_VARIABLES",
    "DEFAULT_ENGINE",
    "MAX_CEL_CHARS",
    "MAX_CEL_NESTING",
    "CelCompileError",
    "CelPythonEngine",
    "Engine",
    "Program",
    "cel_shape_problem",
    "pattern_problem",
]


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


class CelPythonEngine:
    """cel-python with its compiled runner."""

    name = "cel-python"

    def compile(self, expr: str) -> Program:
        try:
            return self._compile(expr)
        except (RecursionError, SyntaxError, MemoryError):
            # lark's tree walks and Python's own parser of the transpiled code have limits.
            raise CelCompileError(f"expression {TOO_DEEP}") from None

    def _compile(self, expr: str) -> Program:
        tree = parse(expr)
        free = free_variables(tree)
        check_constants(expr, tree)
        source = fix_has(ENV.program(tree).tp.source_text)  # type: ignore[attr-defined]
        program = CelpyProgram(expr, free, runner(source), args_fields(tree))
        if not free:  # a constant condition: its one result is known now
            try:
                program.evaluate({})
            except PolicyEvalError as exc:
                raise CelCompileError(f"always fails ({exc.code})") from None
        return program

    def convert(self, value: Any) -> Any:
        return to_cel(value)

    def timestamp(self, when: datetime) -> Any:
        return celtypes.TimestampType(when)


DEFAULT_ENGINE: Engine = CelPythonEngine()
