"""The CEL engine behind a small interface: ``compile(expr) -> Program``, ``evaluate -> bool``.

cel-python is the engine. Its compiled runner (expressions transpiled to Python closures) is
about six times faster than its interpreter, and the first ``celpy.Environment`` created fixes
a process-wide parser, so the compiled environment is created at import, before anything else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import celpy
import re2
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


class _Vars:
    """What the transpiled code reads as ``activation``: the variables as attributes.

    cel-python's own Activation clones itself and resolves every name through typed name
    containers on each evaluation; for the six flat variables of our context a plain
    namespace gives the same values at a fraction of the cost. Macros nest it for their
    bound variable.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name that is not set: the loader rejects undeclared names, so
        # this is a variable the caller did not supply. NameError becomes a CEL error.
        raise NameError(f"no value for {name!r}")

    def nested_activation(self, annotations: Any = None, vars: Any = None) -> _Vars:
        nested = _Vars(self.__dict__)
        nested.__dict__.update(vars or {})
        return nested

    def resolve_variable(self, name: str) -> Any:
        return getattr(self, name)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is our error to report, not a line on stderr


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _re2_message(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _matches(text: Any, pattern: Any) -> Any:
    """CEL ``matches()`` (RE2 search) with compiled patterns kept: cel-python compiles the
    pattern on every call, which was a fifth of a regex rule's time."""
    try:
        found = _regex(pattern).search(text)
    except re2.error as exc:
        return CELEvalError("match error", exc.__class__, exc.args)
    return celtypes.BoolType(found is not None)


def _runner(source: str) -> Callable[[_Vars], Any]:
    """The transpiled statements as one function of the activation.

    cel-python executes its transpiled module with a process-wide ``base_activation`` global
    on every evaluation; as a function taking the activation it runs without that global
    (so evaluations cannot see each other's variables) and without re-``exec``.
    """
    body = "\n".join("    " + line for line in source.splitlines())
    text = f"def _cel(base_activation):\n{body}\n    return CEL\n"
    text = text.replace("celpy.evaluation.function_matches(", "_cel_matches(")
    namespace = dict(evaluation.result.__globals__)
    namespace["_cel_matches"] = _matches
    exec(compile(text, "<cel>", "exec"), namespace)
    fn: Callable[[_Vars], Any] = namespace["_cel"]
    return fn


@dataclass(frozen=True, slots=True)
class _CelpyProgram:
    source: str
    variables: frozenset[str]
    runner: Callable[[_Vars], Any]
    args_fields: frozenset[str] | None = None

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        try:
            value = self.runner(_Vars(activation))
        except CELEvalError as exc:
            raise _eval_error(self.source, exc) from None
        except RecursionError:
            raise PolicyEvalError("cel.error", self.source, "RecursionError") from None
        except Exception as exc:  # the transpiled code is Python: any error is a CEL error
            wrapped = CELEvalError("evaluation error", type(exc), exc.args)
            raise _eval_error(self.source, wrapped) from None
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


def _args_ident(member: Any) -> Any:
    """The ``ident args`` node when ``member`` is the bare name ``args``, else None."""
    if not isinstance(member, Tree) or member.data != "member" or len(member.children) != 1:
        return None
    primary = member.children[0]
    if not isinstance(primary, Tree) or primary.data != "primary":
        return None
    ident = primary.children[0]
    if isinstance(ident, Tree) and ident.data == "ident" and str(ident.children[0]) == "args":
        return ident
    return None


def args_fields(tree: Tree[Token]) -> frozenset[str] | None:
    """The top-level argument fields an expression reads, when it reads only ``args.<name>``
    (``has(args.x)`` included); None when it uses ``args`` as a whole (``size(args)``,
    ``args.exists(...)``, ``"x" in args``), which needs every field."""
    fields: set[str] = set()
    direct: set[int] = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot":
            ident = _args_ident(node.children[0])
            if ident is not None:
                fields.add(str(node.children[1]))
                direct.add(id(ident))
    every = [n for n in tree.iter_subtrees() if n.data == "ident" and str(n.children[0]) == "args"]
    if any(id(n) not in direct for n in every):
        return None
    return frozenset(fields)


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


_INT64_MIN, _INT64_MAX = -(2**63), 2**63


def _int_type_new(cls: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
    """``IntType(n)`` for a plain in-range ``int``, without cel-python's detour.

    cel-python builds a ``functools.wraps`` overflow-checking wrapper on every ``IntType``
    it makes, including each integer literal of a transpiled expression on every evaluation
    and every ``size()``: about 3 µs each. For a plain int the result is the same int, range
    checked the same way; anything else goes to the library as before.
    """
    if type(source) is int and _INT64_MIN <= source < _INT64_MAX:
        return int.__new__(cls, source)
    return _LIBRARY_INT_NEW(cls, source, *args, **kwargs)


_LIBRARY_INT_NEW = celtypes.IntType.__new__
celtypes.IntType.__new__ = _int_type_new  # type: ignore[method-assign]


def _fix_has(source: str) -> str:
    return _HAS_LINE.sub(r"\1celpy.celtypes.BoolType(\2)", source)


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
        return celtypes.IntType(value)  # out of the int64 range: ValueError("overflow")
    if kind is float:
        return celtypes.DoubleType(value)
    if kind is list or kind is tuple:
        return celtypes.ListType([_to_cel(item) for item in value])
    if value is None:
        return None
    return json_to_cel(value)  # anything else (subclasses, datetimes): the library decides


#: Longest condition accepted, and deepest bracket nesting: beyond these the parser and the
#: transpiled Python recurse past their limits (a clear load error instead of a crash).
MAX_CEL_CHARS = 8192
MAX_CEL_NESTING = 32
_TOO_DEEP = "is nested too deeply for the engine; split it into several rules"


def cel_shape_problem(expr: str) -> str | None:
    """Why ``expr`` is too long or too deeply bracketed to compile, or None. Checked before
    any engine sees it; brackets inside string literals do not count."""
    if len(expr) > MAX_CEL_CHARS:
        return f"expression is {len(expr)} characters long (at most {MAX_CEL_CHARS})"
    depth, deepest, quote, i = 0, 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif expr.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch in "\"'":
            quote = ch * 3 if expr.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
        i += 1
    if deepest > MAX_CEL_NESTING:
        return f"brackets nested {deepest} deep (at most {MAX_CEL_NESTING})"
    return None


_EXPR_NODES = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
    | {"unary", "member", "primary"}
)


def _constant(tree: Tree[Token]) -> bool:
    return not any(n.data == "ident" for n in tree.iter_subtrees())


def _constant_value(text: str) -> Any:
    """Evaluate an expression that reads no variable; PolicyEvalError when it fails."""
    tree = _ENV.compile(text)
    source = _fix_has(_ENV.program(tree).tp.source_text)  # type: ignore[attr-defined]
    try:
        value = _runner(source)(_Vars({}))
    except CELEvalError as exc:
        raise _eval_error(text, exc) from None
    except Exception as exc:  # the transpiled code is Python: any error is a CEL error
        raise _eval_error(text, CELEvalError("evaluation error", type(exc), exc.args)) from None
    if isinstance(value, CELEvalError):
        raise _eval_error(text, value)
    return value


def _text_of(expr: str, node: Tree[Token]) -> str | None:
    """The source text of a sub-tree, or None when it cannot be told for sure.

    cel-python's parser leaves some positions unset, so a candidate (the span it recorded, or
    the one token of a literal) counts only if it parses back to this very sub-tree."""
    meta = node.meta
    tokens = [v for v in node.scan_values(lambda v: isinstance(v, Token))]
    if not meta.empty and meta.start_pos is not None and meta.end_pos is not None:
        text = expr[meta.start_pos : meta.end_pos]
    elif len(tokens) == 1:
        text = str(tokens[0])
    else:
        return None
    try:
        parsed: Any = _ENV.compile(text)
    except CELParseError:
        return None
    while parsed.data != node.data and len(parsed.children) == 1:
        parsed = parsed.children[0]
        if not isinstance(parsed, Tree):
            return None
    return text if parsed == node else None


def _check_constants(expr: str, tree: Tree[Token]) -> None:
    """Parts that read no variable are evaluated now: one that always fails (``1 + "a"``,
    ``1 / 0``) and a regex literal that does not compile are load errors, not denials later.
    Parts whose text cannot be told for sure are left to fail at call time."""
    todo = [tree]
    while todo:
        node = todo.pop()
        text = _text_of(expr, node) if node.data in _EXPR_NODES and _constant(node) else None
        if text is not None:
            try:
                _constant_value(text)
            except PolicyEvalError as exc:
                raise CelCompileError(f"`{text}` always fails ({exc.code})") from None
            continue
        _check_pattern(expr, node)
        todo.extend(child for child in node.children if isinstance(child, Tree))


def _check_pattern(expr: str, node: Tree[Token]) -> None:
    """``x.matches("lit")`` and ``matches(x, "lit")``: the pattern must compile (RE2)."""
    if node.data == "member_dot_arg" and str(node.children[1]) == "matches":
        args = node.children[2:3]
    elif node.data == "ident_arg" and str(node.children[0]) == "matches":
        args = node.children[1:2]
    else:
        return
    exprs = args[0].children if args and isinstance(args[0], Tree) else []
    pattern = exprs[-1] if exprs else None
    if not isinstance(pattern, Tree) or not _constant(pattern):
        return
    text = _text_of(expr, pattern)
    if text is None:
        return
    try:
        value = _constant_value(text)
    except PolicyEvalError:
        return  # the constant check reports it
    if not isinstance(value, str):
        return  # a wrong type is the constant check's or the call's to report
    try:
        _regex(str(value))
    except re2.error as exc:
        message = f"matches(): bad regular expression {str(value)!r}: {_re2_message(exc)}"
        raise CelCompileError(message) from None


def pattern_problem(expr: str) -> str | None:
    """A ``matches()`` regex literal of ``expr`` that does not compile, for engines without
    that check (cel-cpp compiles patterns when called). None if none, or if cel-python's
    parser reads the expression differently."""
    try:
        tree = _ENV.compile(expr)
        for node in tree.iter_subtrees():
            _check_pattern(expr, node)
    except CelCompileError as exc:
        return exc.message
    except Exception:  # the engine that compiled it has the last word
        return None
    return None


class CelPythonEngine:
    """cel-python with its compiled runner."""

    name = "cel-python"

    def compile(self, expr: str) -> Program:
        try:
            return self._compile(expr)
        except (RecursionError, SyntaxError, MemoryError):
            # lark's tree walks and Python's own parser of the transpiled code have limits.
            raise CelCompileError(f"expression {_TOO_DEEP}") from None

    def _compile(self, expr: str) -> Program:
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
        _check_constants(expr, tree)
        source = _fix_has(_ENV.program(tree).tp.source_text)  # type: ignore[attr-defined]
        program = _CelpyProgram(expr, frozenset(free), _runner(source), args_fields(tree))
        if not free:  # a constant condition: its one result is known now
            try:
                program.evaluate({})
            except PolicyEvalError as exc:
                raise CelCompileError(f"always fails ({exc.code})") from None
        return program

    def convert(self, value: Any) -> Any:
        return _to_cel(value)

    def timestamp(self, when: datetime) -> Any:
        return celtypes.TimestampType(when)


DEFAULT_ENGINE: Engine = CelPythonEngine()
