"""Located readers the config's sections share; every problem is kept with its ``file:line``.

A reader returns None for a field the file does not give (or gives wrongly, the problem noted),
and ``build`` leaves such fields out, so a section's defaults are its dataclass's alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import Problem, SourceLocation
from gateway.policy.schema import Fields

T = TypeVar("T")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: SHA-256 of "" and of a newline: what hashing an unset variable gives (printf, echo).
_DIGESTS_OF_NOTHING = frozenset(hashlib.sha256(s).hexdigest() for s in (b"", b"\n"))


def build(cls: type[T], **given: Any) -> T:
    """``cls`` from the fields given; a None keeps the field's default."""
    return cls(**{name: value for name, value in given.items() if value is not None})


class Reader:
    """Problems go to one shared list; relative paths are taken from the config's folder."""

    def __init__(self, base: Path, problems: list[Problem]) -> None:
        self.base = base
        self.problems = problems

    def err(self, where: SourceLocation, field: str, message: str) -> None:
        self.problems.append(Problem(where, field, message))

    def section(
        self, top: Fields, name: str, cls: type[Any], removed: Mapping[str, str] | None = None
    ) -> Fields | None:
        """The mapping under ``name``; its keys are the fields of the dataclass ``cls``, and
        any other is refused; a key in ``removed`` (a setting that no longer exists) is
        refused with the reason given. None if the section is absent or not a mapping."""
        node = top.get(name)
        if node is None:
            return None
        sub = Fields(node, name, self.problems)
        if not sub.ok:
            return None
        gone = removed or {}
        sub.check_known([*(field.name for field in fields(cls)), *gone])
        for key, why in gone.items():
            if sub.get(key) is not None:
                self.err(sub.where(key), f"{name}.{key}", why)
        return sub

    def path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else self.base / path

    def str_map(self, sub: Fields, name: str) -> dict[str, str] | None:
        node = sub.get(name)
        if node is None:
            return None
        if not isinstance(node.value, dict):
            self.err(node.where, f"{sub.path}.{name}", "must be a mapping of strings")
            return None
        out: dict[str, str] = {}
        for key, item in node.value.items():
            if isinstance(item.value, str | int | float) and not isinstance(item.value, bool):
                out[key] = str(item.value).strip()
            else:
                self.err(item.where, f"{sub.path}.{name}.{key}", "must be a string")
        return out

    def str_list(self, sub: Fields, name: str) -> tuple[str, ...] | None:
        node = sub.get(name)
        if node is None:
            return None
        if not isinstance(node.value, list):
            self.err(node.where, f"{sub.path}.{name}", "must be a list of strings")
            return None
        return tuple(str(item.value) for item in node.value)

    def whole(self, sub: Fields, name: str, low: int, high: int, unit: str) -> int | None:
        """A whole number of ``unit`` from ``low`` to ``high``."""
        node = sub.get(name)
        if node is None:
            return None
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            msg = f"must be a whole number of {unit} from {low} to {high}"
            self.err(node.where, f"{sub.path}.{name}", msg)
            return None
        return value

    def digest(self, sub: Fields, name: str) -> str | None:
        """A required SHA-256 digest, as 64 lowercase hex characters."""
        value = sub.string(name, required=True)
        if value is not None and not _HEX64.fullmatch(value):  # ("$" passes a final newline)
            self.err(sub.where(name), f"{sub.path}.{name}", "must be 64 lowercase hex characters")
            return None
        if value is not None and len(set(value)) < 8:  # a SHA-256 digest has about 16
            # deploy/example.env's zeros, or the like: a grant no key matches, or worse
            msg = "a placeholder: `celgate keys new` or `celgate admin-token new` prints one"
            self.err(sub.where(name), f"{sub.path}.{name}", msg)
            return None
        if value in _DIGESTS_OF_NOTHING:  # `printf %s "$TOKEN" | sha256sum`, $TOKEN unset
            msg = "the digest of an empty secret (a variable that was not set?)"
            self.err(sub.where(name), f"{sub.path}.{name}", msg)
            return None
        return value

    @staticmethod
    def flag(sub: Fields, name: str) -> bool | None:
        if sub.get(name) is None:
            return None
        return sub.boolean(name, False)  # a non-boolean is a problem at its line
