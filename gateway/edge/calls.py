"""One ``tools/call`` through the pipeline and on to its upstream, the same on every face
(the relay, both eras of ``/mcp``): a ``wait`` approval held on an SSE stream kept alive when
the client takes SSE; an ``elicit`` one asked of the client's human in band (on that stream in
the handshake era, by ``input_required`` under 2026-07-28); a denial answered in the era's
shape; an admitted call forwarded, its upstream time measured."""

from __future__ import annotations

from gateway.edge.elicit import ElicitFace
from gateway.edge.forward import Forward, forward
from gateway.edge.held import HeldStream, accepts_sse
from gateway.edge.replies import denial
from gateway.pipeline.admission import admit, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import Message


async def call_through(
    gw: Gateway,
    incoming: Incoming,
    send: Send,
    message: Message,
    call: Call,
    fwd: Forward,
    identity: Identity,
    version: str | None,
) -> None:
    held = HeldStream(incoming, send, message) if accepts_sse(incoming) else None
    face = ElicitFace(gw, message, version, identity, held)
    fwd.body = face.upstream_body(fwd.body)
    elicit = face.elicitor(call, fwd) if face.available(fwd) else None
    hold = held.hold if held is not None else None
    admission = await admit(gw, call, hold=hold, elicit=elicit)
    if held is not None and held.opened:
        await held.answer(gw, call, fwd, admission)
        return
    if face.pending is not None and not admission.allowed:
        body = face.answer_body(message.msg_id, admission.decision, admission.decision_id)
        await reply(send, 200, body)
        return
    if not admission.allowed:
        body = denial(message.msg_id, admission.decision, admission.decision_id, version)
        await reply(send, 200, body)
        return
    async with timed_upstream(gw, call):
        await forward(incoming, send, fwd)
