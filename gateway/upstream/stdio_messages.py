"""JSON-RPC messages the stdio links make themselves, and the per-request deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

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


class Deadline:
    """Expire a request after ``within`` seconds without a sign of life from the child
    (``last_sign`` gives its time, or None once the request is answered).

    A timer on the loop, re-armed from the last sign, not a task per request: most requests
    are answered long before it fires, and ``cancel`` then drops it.
    """

    _expiring: set[asyncio.Task[None]] = set()  # strong references until each has run

    def __init__(
        self,
        within: float,
        last_sign: Callable[[], float | None],
        expire: Callable[[], Awaitable[None]],
    ) -> None:
        self.within = within
        self.last_sign = last_sign
        self.expire = expire
        self.loop = asyncio.get_running_loop()
        self.timer = self.loop.call_later(within, self._check)

    def _check(self) -> None:
        seen = self.last_sign()
        if seen is None:
            return
        left = seen + self.within - time.monotonic()
        if left > 0:
            self.timer = self.loop.call_later(left, self._check)
            return
        task = self.loop.create_task(self._expire())
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire(self) -> None:
        await self.expire()

    def cancel(self) -> None:
        self.timer.cancel()


def keyable(value: Any) -> bool:
    """Whether an id or a progress token from a child can be one of ours: absent, a string
    or a number (a list or an object there would fail as a key, and is no id)."""
    return value is None or isinstance(value, str | int | float)


def progress_token(message: dict[str, Any]) -> Any:
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    if message.get("method") == "notifications/progress":
        return params.get("progressToken")
    meta = params.get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None
