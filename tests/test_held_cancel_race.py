"""A cancel sent as soon as a held call's stream has begun ends its wait. The call was
registered as cancellable only once its wait began, after the stream's head was sent: a
client that cancelled at once (the head in hand) found nothing to cancel, and the call
stayed held until its timeout. Here the cancel is taken at the very moment the head is
written, the earliest a client can know the call is held."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from gateway.edge.held import HeldStream, held_calls, held_key
from gateway.policy.model import Decision, Identity
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming

BODY = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "drop"}}


async def test_a_cancel_taken_with_the_streams_head_ends_the_wait() -> None:
    gw: Any = SimpleNamespace(extras={}, approvals=None)
    scope = {"method": "POST", "path": "/mcp/up", "headers": [], "client": ("127.0.0.1", 1)}
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()  # the client stays: only its cancel ends the wait
        return {"type": "http.disconnect"}

    incoming = Incoming(scope, receive)
    identity = Identity("bot", "bot")
    message = rpc.classify(json.loads(json.dumps(BODY)))
    key = held_key(incoming, identity, message.msg_id)
    found: list[bool] = []

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":  # the client has the head: it cancels
            found.append(held_calls(gw.extras).cancel(key))

    async def wait(_tick: Any) -> Decision:
        await never.wait()  # no one approves
        raise AssertionError("unreachable")

    held = HeldStream(incoming, send, message, gw, None, lambda: key)
    decision = Decision("require_approval", "r", "held", "rev")
    returned = await asyncio.wait_for(held.hold(decision, wait), 10)
    assert found == [True]  # the cancel found the call
    assert held.cancelled and returned is decision
    assert held_calls(gw.extras).waiting == {}  # and nothing is left registered


async def test_a_cancel_before_the_call_is_held_ends_it_before_any_wait() -> None:
    """A cancel that came while the call was being decided (or while ``/mcp`` opened its
    server's link, a stdio server's start) found nothing held: the call was held anyway,
    shown to the operator, and ran once approved (red-team wave 69). Kept a while, it ends
    the hold before any approval request is made."""
    gw: Any = SimpleNamespace(extras={}, approvals=None)
    headers = [(b"mcp-session-id", b"s-1")]
    scope = {"method": "POST", "path": "/mcp", "headers": headers, "client": ("127.0.0.1", 1)}

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    incoming = Incoming(scope, receive)
    message = rpc.classify(json.loads(json.dumps(BODY)))
    key = held_key(incoming, Identity("bot", "bot"), message.msg_id)
    assert held_calls(gw.extras).cancel(key) is False  # nothing held yet: kept
    assert held_calls(gw.extras).cancelled_early(key)
    # Without a session ids are no session's: another client of the agent may use it anew.
    sessionless = (key[0], key[1], "", key[3])
    assert held_calls(gw.extras).cancel(sessionless) is False
    assert not held_calls(gw.extras).cancelled_early(sessionless)
    waited: list[bool] = []

    async def wait(_tick: Any) -> Decision:
        waited.append(True)  # an approval request would be made here
        return Decision("allow", "r", "approved", "rev")

    async def send(_event: dict[str, Any]) -> None:
        pass

    held = HeldStream(incoming, send, message, gw, None, lambda: key)
    decision = Decision("require_approval", "r", "held", "rev")
    returned = await asyncio.wait_for(held.hold(decision, wait), 10)
    assert waited == [] and held.cancelled and returned is decision
