"""The JSON types a tool's ``inputSchema`` declares for its arguments, checked before policy.

A server built on a typed SDK converts what it is sent into what its parameters declare:
``"true"`` into ``True``, ``"5"`` into ``5``, the string ``'["prod"]'`` into a list. A rule
reads the value as sent, so ``args.recursive == true`` is false for ``"true"`` (CEL compares
values of different types as unequal), and the upstream then runs with ``recursive=True``.
The policy must decide on the value the upstream will run; so an argument whose JSON type is
not one its schema allows is refused before any rule is looked at.

Only types are checked (``type``, ``enum``/``const`` values, ``anyOf``/``oneOf`` branches,
local ``$ref``s, ``properties`` and ``items``, nested); the rest of JSON Schema (required
fields, ranges, patterns, formats) is the upstream's to enforce, since no conversion comes
from it. A schema part this does not understand checks nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.wire.jsonrpc import loads as json_loads

#: Nesting followed into a schema, parts of one schema made into shapes (a schema comes from
#: an upstream: references that branch could otherwise make billions), and values looked at
#: in one call's arguments: past the last, the call is refused (it cannot be checked whole).
MAX_DEPTH = 64
MAX_PARTS = 10_000
MAX_CHECKED = 50_000
KINDS = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})


@dataclass(slots=True, eq=False)
class Shape:
    """What a value may be: its JSON kinds (None: any), and the shapes of its members. Shapes
    form a graph as the schema does: a ``$ref`` back to an enclosing part is the same shape."""

    kinds: frozenset[str] | None = None
    properties: dict[str, Shape] | None = None
    others: Shape | None = None  # ``additionalProperties``: the keys ``properties`` does not name
    items: Shape | None = None
    positions: list[Shape] | None = None  # ``prefixItems``: a tuple's items, by position
    branches: list[Shape] | None = None  # ``anyOf``/``oneOf``: a value fits one of them
    required: frozenset[str] = frozenset()  # an object's: a union's branch lacking one is not it

    @property
    def checks_nothing(self) -> bool:
        return (
            self.kinds is None
            and self.properties is None
            and self.others is None
            and self.items is None
            and self.positions is None
            and self.branches is None
        )


ANY = Shape()


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape_of(schema: Any) -> Shape | None:
    """The shape of a tool's ``inputSchema``, or None when it declares no argument's type."""
    shape = _Maker(schema).shape(schema, 0)
    return shape if shape.properties or shape.others else None


class _Maker:
    """One shape per part of one schema (at most ``MAX_PARTS``; the rest check nothing)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.made: dict[int, Shape] = {}
        self.refs: dict[str, Any] = {}  # each reference resolved once
        self.left = MAX_PARTS

    def shape(self, schema: Any, depth: int) -> Shape:
        if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
            return ANY
        ref = schema.get("$ref")
        if isinstance(ref, str):
            # Each hop costs a part, and a path is walked once per schema: a 400-step path
            # that refers to itself, named by 1,000 properties, walked every hop of every
            # one (ten seconds of the loop every caller shares, at each tools/list).
            self.left -= 1
            if self.left < 0:
                return ANY
            if ref not in self.refs:
                self.refs[ref] = _resolve(ref, self.root)
            target = self.refs[ref]
            known = self.made.get(id(target)) if isinstance(target, Mapping) else None
            return known if known is not None else self.shape(target, depth + 1)
        known = self.made.get(id(schema))
        if known is not None:
            return known
        self.left -= 1
        if self.left < 0:
            return ANY
        branches = schema.get("anyOf") or schema.get("oneOf")
        if "type" not in schema and isinstance(branches, list) and branches:
            either = self.made[id(schema)] = Shape()
            made = [self.shape(b, depth + 1) for b in branches]
            if not any(b.kinds is None for b in made):  # one that allows anything: any
                either.kinds = frozenset().union(*(b.kinds or () for b in made))
                either.branches = made
            return either
        shape = self.made[id(schema)] = Shape(kinds=_kinds(schema))
        required = schema.get("required")
        if isinstance(required, list):
            shape.required = frozenset(k for k in required if isinstance(k, str))
        properties = schema.get("properties")
        if isinstance(properties, Mapping):
            shape.properties = {k: self.shape(v, depth + 1) for k, v in properties.items()}
        others = schema.get("additionalProperties")
        if isinstance(others, Mapping):
            shape.others = self.shape(others, depth + 1)
        items = schema.get("items")
        if isinstance(items, Mapping):
            shape.items = self.shape(items, depth + 1)
        positions = schema.get("prefixItems")
        if isinstance(positions, list):
            shape.positions = [self.shape(p, depth + 1) for p in positions]
        return shape


def _kinds(schema: Mapping[str, Any]) -> frozenset[str] | None:
    declared = schema.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list) and declared and all(k in KINDS for k in declared):
        kinds = set(declared)
        if "number" in kinds:
            kinds.add("integer")  # an integer is a number
        return frozenset(kinds)
    values = schema["enum"] if isinstance(schema.get("enum"), list) else None
    if "const" in schema:
        values = [schema["const"]]
    if values:
        return frozenset(kind_of(v) for v in values) | (
            {"number"} if any(kind_of(v) == "integer" for v in values) else set()
        )
    return None


def _resolve(ref: str, root: Any) -> Any:
    """A local reference (``#/$defs/Name``); anything else resolves to nothing."""
    if not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class TooManyValues(Exception):
    """The arguments hold more values than are checked."""


def mismatch(shape: Shape, args: Mapping[str, Any]) -> str | None:
    """Why ``args`` do not have the types ``shape`` declares (the first argument found, by
    its path), or None. Raises TooManyValues past ``MAX_CHECKED`` values, or values nested
    deeper than ``MAX_DEPTH`` where the schema still has something to check."""
    budget = [MAX_CHECKED]
    return _check(shape, dict(args), "", budget, 0)


def _check(shape: Shape, value: Any, path: str, budget: list[int], depth: int) -> str | None:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise TooManyValues
    kind = kind_of(value)
    if shape.kinds is not None and kind not in shape.kinds:
        return _why(shape.kinds, kind, path)
    if kind == "string" and shape.kinds is not None and shape.kinds & _PARSED:
        parsed = _json_text(value)
        if parsed is not None and parsed in shape.kinds:
            got = _ARTICLES.get(parsed, parsed)
            return f"argument {path.lstrip('.')} is JSON text of {got}: send the value itself"
    if shape.branches is not None:
        return _one_of(shape.branches, value, path, budget, depth)
    if isinstance(value, dict) and (shape.properties is not None or shape.others is not None):
        named = shape.properties or {}
        for key, member in value.items():
            inner = named.get(key, shape.others)
            if inner is not None and not inner.checks_nothing:
                found = _check(inner, member, f"{path}.{key[:64]}", budget, depth + 1)
                if found is not None:
                    return found
    if isinstance(value, list) and (shape.items is not None or shape.positions is not None):
        placed = shape.positions or []
        for index, member in enumerate(value):
            inner = placed[index] if index < len(placed) else shape.items
            if inner is not None and not inner.checks_nothing:
                found = _check(inner, member, f"{path}[{index}]", budget, depth + 1)
                if found is not None:
                    return found
    return None


#: What the SDK's servers make of a string sent where a parameter takes more than strings:
#: JSON text of an array, an object or null becomes that value (``pre_parse_json``).
_PARSED = frozenset({"array", "object", "null"})


def _json_text(value: str) -> str | None:
    """The kind of an array, object or null that ``value`` is the JSON text of, or None."""
    text = value.strip()
    if not text or text[0] not in "[{n":
        return None
    try:
        parsed = json_loads(text)
    except (ValueError, RecursionError):
        return None
    return kind_of(parsed) if parsed is None or isinstance(parsed, list | dict) else None


def _one_of(
    branches: list[Shape], value: Any, path: str, budget: list[int], depth: int
) -> str | None:
    """None when ``value`` fits one of the branches; else why not. An object fits only a branch
    whose required fields it has: a server's union takes the branch a value validates as, and
    a branch it cannot be must not vouch for a value another branch would convert."""
    kind = kind_of(value)
    first: str | None = None
    for branch in branches:
        if branch.kinds is not None and kind not in branch.kinds:
            continue
        if isinstance(value, dict) and not branch.required <= value.keys():
            first = first or f"argument {path.lstrip('.')} fits none of its forms"
            continue
        found = _check(branch, value, path, budget, depth)
        if found is None:
            return None
        first = first or found
    return first


_ARTICLES = {"null": "null", "array": "an array", "object": "an object", "integer": "an integer"}


def _why(kinds: frozenset[str], kind: str, path: str) -> str:
    shown = kinds - {"integer"} if "number" in kinds else kinds
    expected = " or ".join(sorted(shown))
    where = path.lstrip(".") or "(the arguments)"
    got = _ARTICLES.get(kind, f"a {kind}")
    return f"argument {where} is {got}; the tool's inputSchema says {expected}"
