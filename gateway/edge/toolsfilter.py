"""Filter a ``tools/list`` answer to what this caller could ever be allowed to call.

The unfiltered list also feeds the risk catalogue (``tool.risk``/``tool.kind`` in CEL) and the
pins. Every field of a listed tool is kept, and its risk and kind are added under ``_meta``;
the list is per caller, so a public cache hint becomes private.
"""

from __future__ import annotations

from typing import Any

from gateway.edge.sse import Transform
from gateway.policy import Call, Identity
from gateway.policy.visibility import visible
from gateway.runtime import Gateway

#: Where a listed tool carries its risk and kind (MCP ``_meta`` keys are reverse-DNS prefixed).
RISK_KEY = "io.celgate/risk"
KIND_KEY = "io.celgate/kind"


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
            info, _ = gw.observe(server, tool)
            call = Call(tool=tool["name"], server=server, identity=identity, info=info)
            if visible(policy, call, now):
                meta = tool.get("_meta")
                meta = meta if isinstance(meta, dict) else {}
                risk = {RISK_KEY: info.risk, KIND_KEY: info.kind}
                kept.append({**tool, "_meta": {**meta, **risk}})
        result = {**result, "tools": kept}
        if result.get("cacheScope") == "public":
            result["cacheScope"] = "private"
        return {**message, "result": result}

    return transform
