"""A call held in ``wait`` mode tells its client progress while it waits (under the client's
own progress token, seconds waited); once approved, the upstream's progress under that token
starts again from nothing. Both SDKs handed the host [5.0, 1.0, 2.0, 3.0]: progress must
increase. The upstream's values (and total) come after the wait's."""

from __future__ import annotations

import json
from typing import Any

from gateway.edge.held import _Keepalive, _ProgressAfterWait
from gateway.wire.jsonrpc import classify
from gateway.wire.sse import DROP


def progress(token: Any, value: float, total: float | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"progressToken": token, "progress": value}
    if total is not None:
        params["total"] = total
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


async def test_the_upstreams_progress_follows_the_waits() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    call = classify(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "x", "arguments": {}, "_meta": {"progressToken": "p1"}},
        }
    )
    tick = _Keepalive(send, call, "waiting")
    await tick(5.2)
    told = json.loads(sent[-1]["body"].decode().split("data: ", 1)[1])
    assert told["params"]["progress"] == tick.told == 5.2
    view = _ProgressAfterWait(None, "p1", 6)
    seen = [view.filter(progress("p1", n, 3))["params"] for n in (0, 1, 2, 3)]
    assert [p["progress"] for p in seen] == [6, 7, 8, 9]
    assert all(p["total"] == 9 for p in seen)
    assert [told["params"]["progress"], *(p["progress"] for p in seen)] == sorted({5.2, 6, 7, 8, 9})
    assert view.filter(progress("other", 1)) is None  # another token's: as it came


async def test_what_the_callers_view_drops_stays_dropped() -> None:
    class Hides:
        def wants(self, data: bytes) -> bool:
            return True

        def wrap_event_id(self, event_id: bytes) -> bytes:
            return event_id

        def filter(self, message: Any) -> Any:
            return DROP

    assert _ProgressAfterWait(Hides(), "p1", 6).filter(progress("p1", 1)) is DROP
