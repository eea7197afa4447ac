"""YAML and JSON documents loaded with the line of every value, for errors with file:line.

Both formats go through PyYAML's composer (JSON is read as YAML flow style), so one walker
gives every mapping key, list item and scalar its 1-based line. Duplicate mapping keys are an
error here: parsers disagree on which one wins, and an operator's typo must not pass silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import Problem, SourceLocation


@dataclass(slots=True)
class Node:
    """A value with its location. ``value`` is a dict of Nodes, a list of Nodes or a scalar."""

    value: Any
    where: SourceLocation
    key_lines: dict[str, int] = field(default_factory=dict)

    def plain(self) -> Any:
        """The value without locations (for hashing and display)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


class _Walker:
    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self._scalars = yaml.SafeLoader("")

    def where(self, node: yaml.Node) -> SourceLocation:
        return SourceLocation(self.file, node.start_mark.line + 1)

    def walk(self, node: yaml.Node, path: str) -> Node:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = [self.walk(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            return Node(items, self.where(node))
        return Node(self._scalars.construct_object(node), self.where(node))

    def _mapping(self, node: yaml.MappingNode, path: str) -> Node:
        out: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self._scalars.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            sub = f"{path}.{key}" if path else key
            if key in out:
                first = lines[key]
                msg = f"duplicate key (first at line {first})"
                self.problems.append(Problem(self.where(key_node), sub, msg))
                continue
            lines[key] = key_node.start_mark.line + 1
            out[key] = self.walk(value_node, sub)
        return Node(out, self.where(node), lines)


def parse_text(text: str, file: str, problems: list[Problem]) -> Node | None:
    """Parse YAML or JSON text; syntax errors are added to ``problems`` and give None."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.append(Problem(SourceLocation(file, line), "", f"syntax error: {exc.problem}"))
        return None
    if root is None:
        return Node({}, SourceLocation(file, 1))
    return _Walker(file, problems).walk(root, "")


def parse_file(path: Path, problems: list[Problem], display: str | None = None) -> Node | None:
    """Read and parse one file; a JSON file is also checked by the strict JSON parser."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(SourceLocation(name, 1), "", f"cannot read: {exc}"))
        return None
    if path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(SourceLocation(name, exc.lineno), "", f"invalid JSON: {exc.msg}")
            )
            return None
    return parse_text(text, name, problems)
