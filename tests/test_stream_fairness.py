"""A stream relayed to a caller gives the event loop a turn now and then: an upstream whose
events are all there already (a flood of progress notices to a caller that reads fast) never
made the relay wait, and every other caller's calls stood still for seconds."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.edge.forward import FAIR_CHUNKS, Forward, _relay_sse
from tests.test_held_answer_bounds import PassAll


class Flood:
    """An answer whose chunks are all there: each is returned without waiting."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks
        self.headers: dict[str, str] = {}

    async def next_chunk(self) -> bytes | None:
        if not self.left:
            return None
        self.left -= 1
        notice = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
        return b"data: " + notice + b"\n\n"


async def test_a_flood_lets_other_callers_run_while_it_is_relayed() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:  # a caller that reads as fast as it comes
        sent.append(message)

    upstream: Any = SimpleNamespace(name="up", silence=None)
    fwd = Forward(upstream, None, None, None, PassAll(), grant="g")
    start = {"type": "http.response.start", "status": 200, "headers": []}
    turns = 0
    relayed = asyncio.ensure_future(_relay_sse(send, Flood(50 * FAIR_CHUNKS), fwd, start, False))
    while not relayed.done():  # another caller's work: one step each turn it is given
        turns += 1
        await asyncio.sleep(0)
    await relayed
    assert turns >= 50
    assert len(sent) > 50 * FAIR_CHUNKS
