"""Argument values a rule marks secret (``secret_args: [password, auth.token]``): masked
wherever arguments are kept or shown (a held call's request, a logged decision record, the
console's live feed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy.matching import candidates
from gateway.policy.model import CompiledPolicy

SECRET = "[celgate: secret]"  # what a masked value is replaced with


def secret_paths(policy: CompiledPolicy, server: str | None, tool: str) -> tuple[str, ...]:
    """Every path any entry that could match the tool marks secret."""
    return tuple(p for e in candidates(policy, server, tool) for p in e.secret_args)


def mask_args(args: Any, paths: tuple[str, ...]) -> Any:
    """A copy of ``args`` with the value at each dotted path replaced by ``SECRET``.

    A path goes through lists item by item (``users.password`` masks every user's), and a
    path that is not there masks nothing."""
    for path in paths:
        args = _mask(args, path.split("."))
    return args


def _mask(value: Any, path: list[str]) -> Any:
    if isinstance(value, list | tuple):
        return [_mask(item, path) for item in value]
    if not isinstance(value, Mapping):
        return value
    # Each way the path's dots may split into names: ``db.conn.password`` is ``db`` then
    # ``conn`` then ``password``, or a flat ``"db.conn.password"``, or ``"db.conn"`` then
    # ``password``... (tools name arguments with dots).
    for cut in range(1, len(path) + 1):
        name = ".".join(path[:cut])
        if name in value:
            rest = path[cut:]
            value = {**value, name: SECRET if not rest else _mask(value[name], rest)}
    return value
