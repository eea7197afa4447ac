"""Filter a ``tools/list`` answer to what this caller could ever be allowed to call.

The unfiltered list also feeds the risk catalogue (``tool.risk``/``tool.kind`` in CEL). Every
field of a listed tool is kept; the list is per caller, so a public cache hint becomes private.
"""

from __future__ import annotations

from typing import Any

from gateway.edge.sse import Transform
from gateway.policy import Call, Identity
from gateway.policy.visibility import visible
from gateway.runtime import Gateway


def tools_list_transform(gw: Gateway, server: str, identity: Identity, msg_id: Any) -> Transform:
    def transform(message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("id") != msg_id:
            return None
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return None
        policy = gw.policy
        now = gw.now()
        kept = []
        for tool in result["tools"]:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            info = gw.observe(server, tool)
            call = Call(tool=tool["name"], server=server, identity=identity, info=info)
            if visible(policy, call, now):
                kept.append(tool)
        result = {**result, "tools": kept}
        if result.get("cacheScope") == "public":
            result["cacheScope"] = "private"
        return {**message, "result": result}

    return transform
