"""Whether an item an upstream lists (a tool, a prompt, a resource, a resource template) has
the shape MCP gives it, as the SDKs' clients check it: the Python SDK's models read strictly
(``"readOnlyHint": "yes"`` is no boolean) and the TypeScript SDK's schema of a tool's
``inputSchema`` and ``outputSchema`` (an object schema: ``type: "object"``, its
``properties`` an object, its ``required`` a list of names). One item of another shape made
the whole list unreadable to them, and on ``/mcp`` every server's with it (red-team wave 47):
such an item is left out, logged, and the rest of the list goes on."""

from __future__ import annotations

import calendar
import re
from typing import Any

import pydantic
from mcp import types

from gateway.edge.schemas import OutputSchemas
from gateway.telemetry.audit import log

_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "tools": types.Tool,
    "prompts": types.Prompt,
    "resources": types.Resource,
    "resourceTemplates": types.ResourceTemplate,
}


def _object_schema(schema: Any) -> bool:
    """An object schema as the TypeScript SDK takes it: each property's schema an object
    (``"a": 5`` or ``"a": true`` failed its listing)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return False
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    return (
        isinstance(properties, dict)
        and all(isinstance(sub, dict) for sub in properties.values())
        and isinstance(required, list)
        and all(isinstance(name, str) for name in required)
    )


def well_formed(key: str, item: Any, schemas: OutputSchemas | None = None) -> bool:
    """Whether ``item`` of a ``key`` list (``tools``, ``prompts``, ``resources``,
    ``resourceTemplates``) is one both SDKs read (a tool's ``outputSchema`` checked within
    the budget of ``schemas``, its list's)."""
    if not isinstance(item, dict):
        return False
    if key == "tools" and not (
        _object_schema(item.get("inputSchema"))
        and (
            "outputSchema" not in item
            or (
                _object_schema(item["outputSchema"])
                and (schemas or OutputSchemas()).compiles(item["outputSchema"])
            )
        )
    ):
        return False
    if key in ("resources", "resourceTemplates") and not _dated(item.get("annotations")):
        return False
    model = _MODELS.get(key)
    return model is None or _reads(model, item, strict=True)


#: An ISO 8601 date and time with its offset, as the TypeScript SDK reads a resource's
#: ``annotations.lastModified`` (``z.iso.datetime({offset: true})``): seconds and their
#: fraction may be left out, the offset may not.
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
    r"(?:Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _dated(annotations: Any) -> bool:
    """Whether a listed resource's ``annotations`` give no ``lastModified`` or one of a date
    and time with an offset (``"yesterday"``, ``"2025-01-01"`` or ``"2025-01-01T00:00:00"``,
    which the Python SDK takes as text, failed the TypeScript SDK's whole list: red-team
    wave 49)."""
    if not isinstance(annotations, dict) or "lastModified" not in annotations:
        return True
    when = annotations["lastModified"]
    found = _DATETIME.fullmatch(when) if isinstance(when, str) else None
    if found is None:
        return False
    year, month, day = (int(part) for part in found.groups())
    if not 1 <= month <= 12:
        return False
    leap = month == 2 and calendar.isleap(year)
    return 1 <= day <= _MONTH_DAYS[month - 1] + leap


def _reads(model: type[pydantic.BaseModel], value: Any, *, strict: bool) -> bool:
    """Whether ``model`` reads ``value``."""
    try:
        model.model_validate(value, strict=strict)
    except (pydantic.ValidationError, ValueError, TypeError, RecursionError):
        return False
    return True


#: Fields whose values are JSON Schemas or free metadata: taken as they are (a schema's
#: ``"default": null`` means something).
_AS_THEY_ARE = frozenset({"inputSchema", "outputSchema", "_meta"})


def _normalized(value: Any, depth: int = 0) -> Any:
    """An item as both SDKs read it, nothing meant changed: a field given as ``null`` left
    out (the TypeScript SDK refused ``"description": null`` and the whole list with it, where
    the field may only be absent) and a whole number written as a float made an integer
    (``"size": 1024.0``: JavaScript reads it so, and a strict reading refused it)."""
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {
            k: v if k in _AS_THEY_ARE else _normalized(v, depth + 1)
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, list):
        return [_normalized(v, depth + 1) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _without_schema_id(item: Any) -> Any:
    """A tool without its ``outputSchema``'s own ``$id``: the TypeScript SDK keeps the first
    schema it compiles under an ``$id`` for every later one of the same (one server's tool
    could replace another's), and fails on some (``urn:x``); its references stay within the
    schema (``schemas.compiles``), which that ``$id`` does not change (red-team wave 50)."""
    schema = item.get("outputSchema") if isinstance(item, dict) else None
    if not isinstance(schema, dict) or "$id" not in schema:
        return item
    return {**item, "outputSchema": {k: v for k, v in schema.items() if k != "$id"}}


def well_formed_items(key: str, items: list[Any], server: str) -> list[Any]:
    """The items of ``items`` both SDKs read (``_normalized``); the others logged (one line
    a list)."""
    kept: list[Any] = []
    dropped: list[Any] = []
    schemas = OutputSchemas()
    for item in items:
        item = _without_schema_id(_normalized(item))
        try:
            fine = well_formed(key, item, schemas)
        except Exception:  # one item the checks did not foresee: left out, the list goes on
            log.exception("upstream.item_check_failed", server=server, list=key)
            fine = False
        if fine:
            kept.append(item)
        else:
            dropped.append(item.get("name") if isinstance(item, dict) else None)
    if schemas.over_budget:
        log.warning("tools.schemas_over_budget", server=server, tools=schemas.over_budget)
    if dropped:
        names = [ascii(name)[:100] for name in dropped[:5]]
        log.warning(
            "upstream.misshapen_items", server=server, list=key, items=len(dropped), first=names
        )
    return kept


def input_required_readable(result: dict[str, Any]) -> bool:
    """Whether a 2026-07-28 ``input_required`` result is one the SDKs read: its requests
    MCP's input requests, whole (an elicitation whose ``params`` were text, or a sampling
    request whose ``messages`` were, failed the Python SDK's call), its ``requestState``
    text."""
    return _reads(types.InputRequiredResult, result, strict=False)


def list_result_fields(result: dict[str, Any]) -> dict[str, Any]:
    """A list result's own fields as the SDKs read them: a ``nextCursor`` that is no text, or
    a ``_meta`` that is no object (or names a ``progressToken`` that is no string or
    integer), made the whole list unreadable (red-team wave 48): left out."""
    out = result
    if "nextCursor" in out and not isinstance(out["nextCursor"], str):
        out = {k: v for k, v in out.items() if k != "nextCursor"}
    meta = out.get("_meta")
    if "_meta" in out and (
        not isinstance(meta, dict)
        or (
            "progressToken" in meta
            and (not isinstance(meta["progressToken"], str | int) or meta["progressToken"] is True)
        )
    ):
        out = {k: v for k, v in out.items() if k != "_meta"}
    return out
