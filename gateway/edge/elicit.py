"""In-band approval on the relay: the human at the client approves a held call in the client.

A rule with ``approval: {mode: elicit}`` asks through the client's elicitation (a form with
one boolean, ``approve``), showing the tool, the server, a readable copy of the arguments and
the reason. Accepted with ``approve: true``, the call goes on through the pipeline (limits,
record) to the upstream; declined (``approval_declined``) or dismissed (``approval_cancelled``)
it is a denial with its reason. How the question travels depends on the caller's era:

- 2025-11-25: the call's POST is answered as an SSE stream carrying the gateway's own
  ``elicitation/create``; the answer arrives as a separate POST (``deliver``), recognised by
  its id and never forwarded upstream.
- 2026-07-28: the call is answered ``input_required`` with the elicitation and a signed
  ``requestState``; the client's retry carries the answer and the state, checked and used once.

A client that cannot be asked (no elicitation capability, no SSE) gets the rule's
``fallback`` mode (``gateway.pipeline.admission``). Tokens and process-local state:
``gateway.edge.inband``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio

from gateway.approvals.service import preview_args
from gateway.edge import inband
from gateway.edge.forward import Forward
from gateway.edge.held import Cancellable, HeldStream
from gateway.edge.replies import input_required
from gateway.errors import BackendUnavailable
from gateway.pipeline.admission import Elicit, Tick
from gateway.pipeline.gateway import Gateway
from gateway.policy.model import Call, Decision, Identity
from gateway.policy.secrets import mask_args
from gateway.printable import printable
from gateway.wire.asgi import Send, reply
from gateway.wire.jsonrpc import (
    INVALID_REQUEST,
    MODERN_VERSIONS,
    Message,
    error_body,
    json_bytes,
)
from gateway.wire.jsonrpc import loads as json_loads
from gateway.wire.sse import View, spliced_by
from gateway.wire.sse import message_event as event

#: The key of the gateway's question in ``inputRequests`` / ``inputResponses`` (2026-07-28).
INPUT_KEY = "celgate-approval"
CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {
            "type": "boolean",
            "title": "Approve this call",
            "description": "true lets this one call through; false refuses it",
        }
    },
    "required": ["approve"],
}
ARGS_VIEW_CHARS = 4000  # of the arguments shown in the question
#: How long an allowed call's client has to answer its upstream's question and retry as the
#: same call (an approved call's: its approval's timeout).
CONTINUE_SECONDS = 300.0
#: Rounds one admission runs at most, the first included (the SDKs stop at 10 of their own).
MAX_ROUNDS = 10


def question(call: Call, decision: Decision) -> dict[str, Any]:
    """The ``elicitation/create`` params: what is asked, and the one-field form."""
    shown, _ = preview_args(mask_args(dict(call.args), decision.secret_args))
    args = json.dumps(shown, indent=2, ensure_ascii=False, sort_keys=True)
    # Line and paragraph separators, bidi and other invisible characters from the agent are
    # shown escaped: they could draw lines that read as the gateway's own (a forged
    # "Arguments:" block, "pre-approved by the operator").
    args = "\n".join(printable(line) for line in args.split("\n"))
    if len(args) > ARGS_VIEW_CHARS:
        args = args[:ARGS_VIEW_CHARS] + "\n[celgate: cut]"
    message = (
        f"celgate holds a tool call for your approval.\n"
        f"Tool: {call.tool} (server {call.server})\n"
        f"Why: {decision.reason}\n"
        f"Arguments:\n{args}"
    )
    return {"mode": "form", "message": message, "requestedSchema": SCHEMA}


def answered(decision: Decision, answer: dict[str, Any] | None, approval_id: str) -> Decision:
    """The decision after the client's answer (an ElicitResult, or None when there was none)."""
    action = answer.get("action") if isinstance(answer, dict) else None
    content = answer.get("content") if isinstance(answer, dict) else None
    approve = isinstance(content, dict) and content.get("approve") is True
    if action == "accept" and approve:
        reason = f"approved in the client by its user ({approval_id})"
        return replace(decision, effect="allow", reason=reason, approval_id=approval_id)
    if action in ("accept", "decline"):
        reason, code = "the user declined this call in the client", "approval_declined"
    else:
        reason = "the approval question was dismissed in the client without an answer"
        code = "approval_cancelled"
    return replace(decision, effect="deny", reason=reason, approval_id=approval_id, error=code)


def _refused(decision: Decision, code: str) -> Decision:
    reasons = {
        "approval_state_invalid": "the approval state was not issued by this gateway",
        "approval_state_mismatch": "the approval state was issued for another call",
        "approval_policy_changed": "the policy changed since this state was issued: call again",
        "approval_expired": "the approval question expired before it was answered",
        "approval_replayed": (
            "this state was already used, or issued before the approval store was reset: call again"
        ),
        "approval_unavailable": "approvals are not available on this gateway",
    }
    return replace(decision, effect="deny", reason=reasons[code], error=code)


class ElicitFace:
    """One ``tools/call`` on the relay that may be approved in band (see the module doc)."""

    def __init__(
        self,
        gw: Gateway,
        message: Message,
        version: str | None,
        identity: Identity,
        held: HeldStream | None,
    ) -> None:
        self.gw = gw
        self.message = message
        self.version = version
        self.identity = identity
        self.held = held
        self.modern = version in MODERN_VERSIONS
        self.state = message.params.get("requestState")
        self.ours = inband.is_gateway_state(self.state)
        # A continuation of a call already approved (in the client or by an operator), whose
        # upstream asked the client for input: decided by its state, never asked again.
        self.resumes = self.modern and self.ours and inband.continues(gw.signer.key, self.state)
        self.pending: dict[str, Any] | None = None  # the input_required result to answer with
        #: The call this one continues, once its state is checked (its round, its expiry).
        self.continued: inband.State | None = None

    def available(self, fwd: Forward) -> bool:
        """Whether this client can be asked in band."""
        if self.modern:
            meta = self.message.params.get("_meta")
            caps = meta.get(CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
            return self.ours or inband.takes_forms(caps)
        if self.held is None:  # the question travels on the call's SSE stream
            return False
        clients = inband.in_band(self.gw.extras).clients
        return clients.elicits(fwd.upstream.name, self.identity.owner, fwd.session_id)

    def upstream_body(self, body: bytes | None) -> bytes | None:
        """The body the upstream gets, once the call is decided: without the gateway's own
        state and answer, and with the upstream's own state back in place only for a
        continuation whose state was checked against this call and used up (``_stateless``).
        It was put back for any call that carried a state of the gateway's: a handshake-era
        request, whose state nothing checked, replayed one call's upstream state onto other
        tools and servers, as often as it liked (red-team wave 37)."""
        if not self.ours or body is None:
            return body
        value = json_loads(body)
        params = value["params"]
        params.pop("requestState", None)
        if self.continued is not None:
            carried = inband.upstream_state(self.gw.signer.key, str(self.state))
            if carried is not None:
                params["requestState"] = carried
        responses = params.get("inputResponses")
        if isinstance(responses, dict):
            responses.pop(INPUT_KEY, None)
            if not responses:
                params.pop("inputResponses")
        return json_bytes(value)

    def elicitor(self, call: Call, fwd: Forward) -> Elicit:
        """The pipeline's ``elicit`` for this call, bound to it."""

        async def elicit(decision: Decision, tick: Tick) -> Decision:
            if self.modern:
                return await self._stateless(call, decision)
            return await self._on_stream(call, fwd, decision, tick)

        return elicit

    # -------------------------------------------------------------- 2026-07-28

    async def _stateless(self, call: Call, decision: Decision) -> Decision:
        key = self.gw.signer.key
        now = time.time()
        store = inband.once_store(
            self.gw.approvals.store if self.gw.approvals is not None else None
        )
        if store is None:
            return _refused(decision, "approval_unavailable")
        if not self.ours:
            timeout = decision.approval.timeout if decision.approval else 300.0
            epoch = await store.current_epoch(fresh=True)  # (Valkey may have lost it)
            state = inband.issue_state(key, call, decision.revision, now + timeout, epoch=epoch)
            self.pending = {"inputRequests": {INPUT_KEY: self._request(call, decision)}}
            self.pending["requestState"] = state
            reason = f"asking the user in the client: {decision.reason}"
            return replace(decision, reason=reason, error="approval_input_required")
        checked = inband.check_state(key, str(self.state), call, decision.revision, now)
        if isinstance(checked, str):
            return _refused(decision, checked)
        ttl = checked.expires - now + 1
        token = "elicit:" + checked.nonce  # used once, whatever the answer (a decline too)
        if not await store.consume_once(token, ttl, checked.epoch, call.identity.owner):
            return _refused(decision, "approval_replayed")  # used, or issued before a reset
        if checked.approval is not None:
            self.continued = checked
            went = f"continuing {checked.origin or 'a call'} (round {checked.rounds + 1})"
        if checked.approval:  # the approved call, answering its upstream's question
            reason = f"approved ({checked.approval}), {went} after its upstream asked for input"
            return replace(decision, effect="allow", reason=reason, approval_id=checked.approval)
        if checked.approval is not None:  # an allowed call, answering its upstream's question
            if not decision.allowed:
                return _refused(decision, "approval_state_mismatch")
            reason = f"{decision.reason}, {went} after its upstream asked for input"
            return replace(decision, reason=reason)
        responses = self.message.params.get("inputResponses")
        answer = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
        return answered(decision, answer, "elc_" + checked.nonce[:16])

    async def continuing(
        self, view: View | None, call: Call, decision: Decision, decision_id: str
    ) -> View | None:
        """The view an allowed 2026-07-28 call's answer passes: when the upstream asks the
        client for input (``input_required``), its ``requestState`` is carried inside one of
        the gateway's, bound to this call (and its approval, if it had one), so the retry
        with the client's answer goes on as the same call: not asked about again, and its
        limits not taken again (each round took a token: a limit of one refused the round
        after the user had answered). Used once; a call goes on so for ``MAX_ROUNDS`` rounds
        at most, within its first round's expiry (one token, or one approval, ran a tool
        upstream for as many rounds as the upstream asked); past them the retry is a call of
        its own."""
        if not (self.modern and decision.allowed):
            return view
        before = self.continued
        rounds = before.rounds + 1 if before is not None else 1
        if rounds >= MAX_ROUNDS:  # this is the last round one admission runs
            return view
        origin = before.origin if before is not None and before.origin else decision_id
        approval = decision.approval_id or ""  # asked in the client, or by an operator
        timeout = CONTINUE_SECONDS
        if decision.approval is not None:  # within its own timeout too
            timeout = min(timeout, decision.approval.timeout)
        chain_ends = before.expires if before is not None else time.time() + timeout
        key, revision = self.gw.signer.key, decision.revision

        store = inband.once_store(
            self.gw.approvals.store if self.gw.approvals is not None else None
        )
        if store is None:
            return view  # nothing could check the state: the retry is a call of its own
        try:  # (a round trip at most once a second: EPOCH_FRESH_SECONDS)
            epoch = await store.current_epoch()
        except BackendUnavailable:
            # No state can be checked now: the retry is a call of its own. A replica's
            # first call during an outage was refused whole, limits or none (wave 44).
            return view

        def wrap(upstream: str | None) -> str:
            return inband.issue_state(
                key,
                call,
                revision,
                chain_ends,  # never later than the first round's
                approval,
                upstream,
                epoch=epoch,
                rounds=rounds,
                origin=origin,
            )

        return Continuing(view, wrap)

    def _request(self, call: Call, decision: Decision) -> dict[str, Any]:
        return {"method": "elicitation/create", "params": question(call, decision)}

    # -------------------------------------------------------------- 2025-11-25

    async def _on_stream(
        self, call: Call, fwd: Forward, decision: Decision, tick: Tick
    ) -> Decision:
        held = self.held
        assert held is not None and fwd.session_id is not None
        key, server = self.gw.signer.key, fwd.upstream.name
        msg_id, nonce = inband.mint_id(key, server, self.identity.owner, fwd.session_id)
        waiters = inband.in_band(self.gw.extras).waiters
        future = waiters.expect(nonce)
        request = {"jsonrpc": "2.0", "id": msg_id, **self._request(call, decision)}
        timeout = decision.approval.timeout if decision.approval else 300.0
        started = time.monotonic()
        answer: dict[str, Any] | None = None
        # Its client may cancel it while its user is asked, as in wait mode: the call was
        # not registered, and one cancelled and then approved ran upstream (red-team wave 57)
        waiting = Cancellable(self.gw, held.call, held.key)
        stop = waiting.register(decision)

        async def ask() -> None:
            nonlocal answer
            await held.open()
            await held.write(event(json_bytes(request)))
            with anyio.move_on_after(timeout):
                stopped = asyncio.ensure_future(stop.wait())
                either: set[asyncio.Future[Any]] = {future, stopped}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if future.done() and not stop.is_set():
                    answer = future.result()

        try:
            await held.watching(ask())
        finally:
            waiters.forget(nonce)
            waiting.unregister()
        await tick(time.monotonic() - started)
        if stop.is_set():  # cancelled by its client: no answer is due, nothing runs
            held.cancelled = held.gone = True
        if held.gone:
            return decision  # still held: the caller went away first
        if answer is None:
            return _refused(decision, "approval_expired")
        return answered(decision, answer.get("result"), "elc_" + nonce[:16])

    def answer_body(self, msg_id: Any, decision: Decision, decision_id: str) -> bytes:
        assert self.pending is not None
        return input_required(msg_id, self.pending, decision, decision_id)


class Continuing:
    """A caller's view that also carries an upstream's ``requestState`` inside the gateway's
    (see ``ElicitFace.continuing``)."""

    def __init__(self, inner: View | None, wrap: Callable[[str | None], str]) -> None:
        self.inner = inner
        self.wrap = wrap

    def wants(self, data: bytes) -> bool:
        return b"input_required" in data or (self.inner is not None and self.inner.wants(data))

    def splice(self, data: bytes) -> bytes | None:
        return None if b"input_required" in data else spliced_by(self.inner, data)

    def filter(self, message: Any) -> Any | None:
        changed = self.inner.filter(message) if self.inner is not None else None
        current = changed if changed is not None else message
        result = current.get("result") if isinstance(current, dict) else None
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return changed
        upstream = result.get("requestState")
        if upstream is not None and (
            not isinstance(upstream, str) or len(upstream) > inband.MAX_UPSTREAM_STATE
        ):
            return changed  # not carried: the retry is asked about again
        return {**current, "result": {**result, "requestState": self.wrap(upstream)}}

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return self.inner.wrap_event_id(event_id) if self.inner is not None else event_id


async def deliver(
    gw: Gateway, send: Send, server: str, identity: Identity, session: str | None, msg: Message
) -> None:
    """A client's answer to the gateway's own request: to the waiting call, never upstream."""
    nonce = None
    if session is not None:
        nonce = inband.check_id(gw.signer.key, str(msg.msg_id), server, identity.owner, session)
    if nonce is None or not inband.in_band(gw.extras).waiters.deliver(nonce, dict(msg.raw)):
        body = error_body(None, INVALID_REQUEST, "no request of this gateway waits for this answer")
        await reply(send, 404, body)
        return
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def remember_client(
    gw: Gateway, server: str, identity: Identity, session: str | None, msg: Message
) -> None:
    """At ``initialize`` (2025-11-25): whether this session's client takes elicitation."""
    if session is None:
        return
    elicits = inband.takes_forms(msg.params.get("capabilities"))
    inband.in_band(gw.extras).clients.remember(server, identity.owner, session, elicits)
