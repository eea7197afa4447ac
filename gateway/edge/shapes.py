"""Whether an item an upstream lists (a tool, a prompt, a resource, a resource template) has
the shape MCP gives it, as the SDKs' clients check it: the Python SDK's models read strictly
(``"readOnlyHint": "yes"`` is no boolean) and the TypeScript SDK's schema of a tool's
``inputSchema`` and ``outputSchema`` (an object schema: ``type: "object"``, its
``properties`` an object, its ``required`` a list of names). One item of another shape made
the whole list unreadable to them, and on ``/mcp`` every server's with it (red-team wave 47):
such an item is left out, logged, and the rest of the list goes on."""

from __future__ import annotations

from typing import Any

import pydantic
from mcp import types

from gateway.telemetry.audit import log

_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "tools": types.Tool,
    "prompts": types.Prompt,
    "resources": types.Resource,
    "resourceTemplates": types.ResourceTemplate,
}


def _object_schema(schema: Any) -> bool:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return False
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    return (
        isinstance(properties, dict)
        and isinstance(required, list)
        and all(isinstance(name, str) for name in required)
    )


def well_formed(key: str, item: Any) -> bool:
    """Whether ``item`` of a ``key`` list (``tools``, ``prompts``, ``resources``,
    ``resourceTemplates``) is one both SDKs read."""
    if not isinstance(item, dict):
        return False
    if key == "tools" and not (
        _object_schema(item.get("inputSchema"))
        and ("outputSchema" not in item or _object_schema(item["outputSchema"]))
    ):
        return False
    model = _MODELS.get(key)
    if model is None:
        return True
    try:
        model.model_validate(item, strict=True)
    except (pydantic.ValidationError, ValueError, TypeError, RecursionError):
        return False
    return True


def well_formed_items(key: str, items: list[Any], server: str) -> list[Any]:
    """The items of ``items`` both SDKs read; the others logged (one line a list)."""
    kept: list[Any] = []
    dropped: list[Any] = []
    for item in items:
        if well_formed(key, item):
            kept.append(item)
        else:
            dropped.append(item.get("name") if isinstance(item, dict) else None)
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
    try:
        types.InputRequiredResult.model_validate(result)
    except (pydantic.ValidationError, ValueError, TypeError, RecursionError):
        return False
    return True
