"""JSON-RPC messages the stdio links make themselves, and the per-request deadline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from gateway.wire.jsonrpc import UPSTREAM_UNAVAILABLE


def unavailable(msg_id: Any, message: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "error": {"code": UPSTREAM_UNAVAILABLE, "message": message},
    }


def too_slow(name: str, timeout: float, msg_id: Any) -> dict[str, Any]:
    return unavailable(msg_id, f"stdio server {name!r} did not answer within {timeout:g} s")


def cancelled(inner: Any, reason: str) -> dict[str, Any]:
    params = {"requestId": inner, "reason": reason}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


async def deadline(
    within: float, last_sign: Callable[[], float | None], expire: Callable[[], Awaitable[None]]
) -> None:
    """Expire a request after ``within`` seconds without a sign of life from the child
    (``last_sign`` gives its time, or None once the request is answered)."""
    while (seen := last_sign()) is not None:
        left = seen + within - time.monotonic()
        if left <= 0:
            await expire()
            return
        await anyio.sleep(left)


def progress_token(message: dict[str, Any]) -> Any:
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    if message.get("method") == "notifications/progress":
        return params.get("progressToken")
    meta = params.get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None
