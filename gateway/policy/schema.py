"""A small validator over located nodes: unknown fields, wrong types and bad choices, each
reported with the line of the offending field. Used by the policy and the config loaders."""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

from gateway.errors import Problem, SourceLocation
from gateway.located import Node


class Fields:
    """The fields of one mapping node, read with their locations."""

    def __init__(self, node: Node, path: str, problems: list[Problem]) -> None:
        self.node = node
        self.path = path
        self.problems = problems
        self.ok = isinstance(node.value, dict)
        if not self.ok:
            kind = type(node.value).__name__ if node.value is not None else "null"
            self._add(node.where, path or "(top level)", f"must be a mapping, not {kind}")

    def _add(self, where: SourceLocation, field: str, message: str) -> None:
        self.problems.append(Problem(where, field, message))

    def _sub(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def where(self, name: str) -> SourceLocation:
        line = self.node.key_lines.get(name, self.node.where.line)
        return SourceLocation(self.node.where.file, line)

    def check_known(self, known: Iterable[str]) -> None:
        allowed = set(known)
        for name in self.node.value:
            if name not in allowed:
                hint = get_close_matches(name, sorted(allowed), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self._add(self.where(name), self._sub(name), f"unknown field{extra}")

    def get(self, name: str) -> Node | None:
        if not self.ok:
            return None
        value: Node | None = self.node.value.get(name)
        return value

    def string(self, name: str, *, required: bool = False) -> str | None:
        node = self.get(name)
        if node is None:
            if required:
                self._add(self.node.where, self._sub(name), "missing")
            return None
        if not isinstance(node.value, str) or not node.value:
            self._add(
                node.where, self._sub(name), f"must be a non-empty string, not {node.value!r}"
            )
            return None
        return node.value

    def choice(self, name: str, options: tuple[str, ...], default: str | None) -> str | None:
        node = self.get(name)
        if node is None:
            return default
        if node.value in options:
            return str(node.value)
        listed = " | ".join(options)
        self._add(node.where, self._sub(name), f"unknown value {node.value!r} (use {listed})")
        return None

    def positive_int(self, name: str, *, required: bool = False) -> int | None:
        node = self.get(name)
        if node is None:
            if required:
                self._add(self.node.where, self._sub(name), "missing")
            return None
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self._add(node.where, self._sub(name), f"must be a positive integer, not {value!r}")
            return None
        return value

    def positive_number(self, name: str) -> float | None:
        node = self.get(name)
        if node is None:
            return None
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self._add(node.where, self._sub(name), f"must be a positive number, not {value!r}")
            return None
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        node = self.get(name)
        if node is None:
            return default
        if not isinstance(node.value, bool):
            self._add(node.where, self._sub(name), f"must be true or false, not {node.value!r}")
            return default
        return node.value
