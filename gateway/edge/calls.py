"""One ``tools/call`` through the pipeline and on to its upstream, the same on every face
(the relay, both eras of ``/mcp``): a ``wait`` approval held on an SSE stream kept alive when
the client takes SSE; an ``elicit`` one asked of the client's human in band (on that stream in
the handshake era, by ``input_required`` under 2026-07-28); a denial answered in the era's
shape; an admitted call forwarded, its upstream time measured."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mcp.shared.inbound import (
    mcp_param_headers,
    validate_mcp_param_headers,
    x_mcp_header_map,
)

from gateway.edge.elicit import ElicitFace
from gateway.edge.forward import Forward, forward
from gateway.edge.held import (
    Cancellable,
    HeldKey,
    HeldStream,
    accepts_sse,
    held_calls,
    held_key,
)
from gateway.edge.replies import denial, is_task_call
from gateway.edge.toolnames import name_problem
from gateway.pipeline.admission import Admission, admit, refused_unread, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Decision, Identity
from gateway.policy.visibility import visible
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import MODERN_VERSIONS, BadMessage, Message


async def call_through(
    gw: Gateway,
    incoming: Incoming,
    send: Send,
    message: Message,
    call: Call,
    fwd: Forward,
    identity: Identity,
    version: str | None,
    admission: Admission | None = None,
    where: str | None = None,
) -> None:
    """Decide ``call`` (unless ``admission`` says it was decided already), then forward it
    or answer its refusal. ``where``: the endpoint the caller called, as its refusals name
    it (``/mcp/<server>`` unless said)."""
    fwd.params, unchecked = param_headers(gw, incoming, call, version, message)

    def key() -> HeldKey:  # made only for a call that is held
        return held_key(incoming, identity, message.msg_id)

    held = HeldStream(incoming, send, message, gw, call, key) if accepts_sse(incoming) else None
    face = ElicitFace(gw, message, version, identity, held)
    elicit = face.elicitor(call, fwd) if face.available(fwd) else None
    # A call held in wait mode may be cancelled by its client, on a stream or not.
    modern = version in MODERN_VERSIONS
    hold = held.hold if held is not None else Cancellable(gw, call, key).watched(incoming, modern)
    if admission is None:
        admission = await admit(gw, call, hold=hold, elicit=elicit, resume=face.resumes)
    if admission.allowed and unchecked is not None:  # never: the policy refuses it whatever
        raise BadMessage(rpc.HEADER_MISMATCH, unchecked, msg_id=message.msg_id)
    if admission.allowed:  # an approved call's upstream may ask for input: carried on
        fwd.view = await face.continuing(fwd.view, call, admission.decision, admission.decision_id)
        fwd.body = face.upstream_body(fwd.body)
    if held is not None and held.opened:
        await held.answer(gw, call, fwd, admission)
        _failed_upstream(fwd, call, admission)
        return
    if face.pending is not None and not admission.allowed:
        body = face.answer_body(message.msg_id, admission.decision, admission.decision_id)
        await reply(send, 200, body)
        return
    if not admission.allowed:
        task = is_task_call(message.params)
        shown = told(gw, call, admission.decision, message, where or f"/mcp/{call.server}")
        body = denial(message.msg_id, shown, admission.decision_id, version, task)
        await reply(send, 200, body)
        return
    registry = held_calls(gw.extras)
    if registry.early and registry.cancelled_early(key()):
        # Cancelled by its client while it was decided (or while /mcp opened its server's
        # link): never sent (one was, and ran, red-team wave 69).
        msg = "the request was cancelled by its client before it was sent"
        await reply(send, 200, rpc.error_body(message.msg_id, rpc.INVALID_REQUEST, msg))
        return
    async with timed_upstream(gw, call):
        await forward(incoming, send, fwd)
    _failed_upstream(fwd, call, admission)


def told(gw: Gateway, call: Call, decision: Decision, message: Message, where: str) -> Decision:
    """A refusal as its caller is told it. A tool the policy refuses this caller whatever
    its arguments is one its ``tools/list`` does not show: its refusal is told exactly as a
    name no server has is (``/mcp``'s, ``aggregate.route``), the decision itself kept for the
    record. A hidden tool was told apart from a missing one by the rule that refused it, by
    the argument-type reason that replaced a condition's failure (a guessed argument of the
    wrong type read its schema), and on ``/mcp`` by being routed at all (red-team wave 37)."""
    if decision.effect != "deny" or visible(gw.policy, call, gw.now()):
        return decision
    name = message.params.get("name")
    return Decision(
        effect="deny",
        rule="route",
        reason=f"no tool named {name!r} on {where}",
        revision=decision.revision,
        error="no_tool",
    )


def _failed_upstream(fwd: Forward, call: Call, admission: Admission) -> None:
    """An allowed call its upstream failed (down, late, gone mid-answer): one line tied to
    its decision record, which says only that it was allowed."""
    if fwd.failure is not None and admission.allowed:
        log.warning(
            "call.upstream_failed",
            decision_id=admission.decision_id,
            grant=call.identity.grant,
            agent=call.identity.agent,
            server=call.server,
            tool=call.tool,
            reason=fwd.failure,
        )


def tool_call(
    gw: Gateway,
    incoming: Incoming,
    message: Message,
    server: str,
    tool: object,
    identity: Identity,
    session: str | None = None,
) -> Call:
    """The call a ``tools/call`` to ``server``'s ``tool`` is (its real name, not ``/mcp``'s),
    or ``BadMessage`` (invalid params) when its name is none or its arguments no object:
    recorded as a deny (rule ``params``), as an agent probing with such calls would
    otherwise be in no record."""
    name, args = checked_params(gw, incoming, message, server, tool, identity, session)
    return Call(
        tool=name,
        args=args,
        server=server,
        identity=identity,
        session=session,
        client_ip=incoming.client_ip,
        info=gw.tool_info(server, name),
    )


def checked_params(
    gw: Gateway,
    incoming: Incoming,
    message: Message,
    server: str,
    tool: object,
    identity: Identity,
    session: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The name and arguments of a ``tools/call``, or ``BadMessage`` (invalid params,
    recorded) when its name is none or its arguments no object."""
    args: Any = message.params.get("arguments", {})
    try:
        name = tool_name(tool, message.msg_id)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            msg = "arguments must be an object"
            raise BadMessage(rpc.INVALID_PARAMS, msg, 200, message.msg_id)
    except BadMessage as exc:
        shown = tool if isinstance(tool, str) and name_problem(tool) is None else "<not a name>"
        refused = Call(
            tool=shown, server=server, identity=identity, session=session,
            client_ip=incoming.client_ip,
        )  # fmt: skip
        refused_unread(gw, refused, exc.message, rule="params", error="bad_params")
        raise
    return name, args


def tool_name(name: object, msg_id: object) -> str:
    """The ``name`` of a ``tools/call``, refused (invalid params) when it is not a name."""
    problem = name_problem(name)
    if problem is not None:
        raise BadMessage(rpc.INVALID_PARAMS, problem, 200, msg_id)
    assert isinstance(name, str)
    return name


def param_headers(
    gw: Gateway, incoming: Incoming, call: Call, version: str | None, message: Message
) -> tuple[dict[str, str] | None, str | None]:
    """The ``Mcp-Param-*`` headers (SEP-2243) the upstream gets for a tool whose schema
    declares them: made here from the body's arguments, never the client's copied (so header
    and body cannot differ upstream). A 2026-07-28 client's own must agree with its body, as
    the server would check: a mismatch is refused (and recorded) before any policy is looked
    at, unless the policy refuses the caller the tool whatever its arguments: then that
    refusal answers, as for a tool not there, and the mismatch is returned unchecked (the
    call must not go ahead on it). This check told a hidden tool's declared headers, and so
    its existence (red-team wave 37)."""
    schema = gw.param_schemas.get((call.server or "", call.tool))
    if schema is None:
        return None, None
    sent = {k: v for k, v in incoming.headers.items() if k.startswith("mcp-param-")}
    problem: str | None = None
    if any(k in incoming.repeated for k in sent):
        problem = "an Mcp-Param header given twice"
    elif version in MODERN_VERSIONS or sent:
        refused = validate_mcp_param_headers(schema, call.args, sent)
        problem = refused.message if refused is not None else None
    if problem is None:
        return mcp_param_headers(x_mcp_header_map(schema), call.args), None
    if not visible(gw.policy, call, gw.now()):
        return None, problem
    refused_unread(gw, replace(call, args={}), problem, rule="params", error="header_mismatch")
    raise BadMessage(rpc.HEADER_MISMATCH, problem, msg_id=message.msg_id)
