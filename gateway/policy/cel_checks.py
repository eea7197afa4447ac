"""What is checked when a CEL condition is compiled, on cel-python's parse tree.

Names (only the context variables and known functions), size and nesting (before any engine
sees the text), constant parts that always fail, regex literals that do not compile, and which
argument fields an expression reads (so a call converts only those).
"""

from __future__ import annotations

from typing import Any

import re2
from celpy import evaluation
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from lark import Token, Tree

from gateway.errors import PolicyEvalError
from gateway.policy.cel_runtime import ENV, Vars, eval_error, fix_has, re2_message, regex, runner

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
    if _bare_ident(member) != "args":
        return None
    return member.children[0].children[0]


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


#: Longest condition accepted, and deepest bracket nesting: beyond these the parser and the
#: transpiled Python recurse past their limits (a clear load error instead of a crash).
MAX_CEL_CHARS = 8192
MAX_CEL_NESTING = 32
TOO_DEEP = "is nested too deeply for the engine; split it into several rules"


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
    tree = ENV.compile(text)
    source = fix_has(ENV.program(tree).tp.source_text)  # type: ignore[attr-defined]
    try:
        value = runner(source)(Vars({}))
    except CELEvalError as exc:
        raise eval_error(text, exc) from None
    except Exception as exc:  # the transpiled code is Python: any error is a CEL error
        raise eval_error(text, CELEvalError("evaluation error", type(exc), exc.args)) from None
    if isinstance(value, CELEvalError):
        raise eval_error(text, value)
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
        parsed: Any = ENV.compile(text)
    except CELParseError:
        return None
    while parsed.data != node.data and len(parsed.children) == 1:
        parsed = parsed.children[0]
        if not isinstance(parsed, Tree):
            return None
    return text if parsed == node else None


def check_constants(expr: str, tree: Tree[Token]) -> None:
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
        regex(str(value))
    except re2.error as exc:
        message = f"matches(): bad regular expression {str(value)!r}: {re2_message(exc)}"
        raise CelCompileError(message) from None


def _no_leading_dot(node: Tree[Token]) -> None:
    """CelCompileError for CEL's root-scoped name (``.args``): cel-python never bound it, so
    ``has(.args.x)`` was false whatever the call and a deny guarded so never applied, where
    cel-google read it as ``args`` (red-team wave 54). Refused by both: one rule file means
    the same on either engine."""
    if node.data in ("dot_ident", "dot_ident_arg"):
        name = str(node.children[0])
        raise CelCompileError(f"a name with a leading dot ('.{name}'): write {name!r}")


def pattern_problem(expr: str) -> str | None:
    """For engines without cel-python's checks: a ``matches()`` regex literal of ``expr``
    that does not compile (cel-cpp compiles patterns when called), or a name with a leading
    dot. None if none, or if cel-python's parser reads the expression differently."""
    try:
        tree = ENV.compile(expr)
        for node in tree.iter_subtrees():
            _no_leading_dot(node)
            _check_pattern(expr, node)
    except CelCompileError as exc:
        return exc.message
    except Exception:  # the engine that compiled it has the last word
        return None
    return None


def parse(expr: str) -> Tree[Token]:
    """cel-python's parse tree of ``expr``; CelCompileError where it does not parse."""
    try:
        return ENV.compile(expr)
    except CELParseError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        line = getattr(exc, "line", None) or 1
        column = getattr(exc, "column", None) or 1
        raise CelCompileError(f"does not parse near `{first.strip()}`", line, column) from None


def free_variables(tree: Tree[Token]) -> frozenset[str]:
    """The context variables an expression reads; CelCompileError for a name the context does
    not have, a field that one of its fixed maps (``tool``, ``agent``, ``session``,
    ``request``) has not, or a function the engine does not know."""
    for node in tree.iter_subtrees():
        _no_leading_dot(node)
    free, bound, calls = _names(tree)
    unknown_vars = sorted(free - CONTEXT_VARIABLES)
    if unknown_vars:
        declared = ", ".join(sorted(CONTEXT_VARIABLES))
        raise CelCompileError(f"undeclared variable {unknown_vars[0]!r} (declared: {declared})")
    _check_fields(tree, bound)
    unknown_calls = sorted(calls - _FUNCTIONS)
    if unknown_calls:
        raise CelCompileError(f"unknown function {unknown_calls[0]!r}")
    return frozenset(free)


#: The fields of the context's fixed maps (``args``, ``agent.attrs``, ``agent.claims`` and
#: ``tool.annotations`` are open: their own keys are the caller's or the server's).
CONTEXT_FIELDS: dict[str, frozenset[str]] = {
    "tool": frozenset({"name", "server", "risk", "kind", "annotations"}),
    "agent": frozenset({"id", "grant", "roles", "attrs", "claims"}),
    "session": frozenset({"id"}),
    "request": frozenset({"time", "ip"}),
}


def _check_fields(tree: Tree[Token], bound: set[str]) -> None:
    """A field selected on ``tool``, ``agent``, ``session`` or ``request`` must be one they
    have: a misspelled one (``agent.rolez``) loaded, and the condition failed on every call
    (``cel.missing_key``): the tool hidden from every list, every call denied."""
    for node in tree.iter_subtrees():
        if node.data != "member_dot":
            continue
        name = _bare_ident(node.children[0])
        fields = CONTEXT_FIELDS.get(name or "")
        if fields is None or name in bound:  # a macro's own variable of that name
            continue
        field = str(node.children[1])
        if field not in fields:
            known = ", ".join(sorted(fields))
            raise CelCompileError(f"{name} has no field {field!r} (its fields: {known})")


def _bare_ident(member: Any) -> str | None:
    """The name when ``member`` is a bare identifier, else None."""
    if not isinstance(member, Tree) or member.data != "member" or len(member.children) != 1:
        return None
    primary = member.children[0]
    if not isinstance(primary, Tree) or primary.data != "primary":
        return None
    ident = primary.children[0]
    if isinstance(ident, Tree) and ident.data == "ident":
        return str(ident.children[0])
    return None
