"""Steps 3 to 7 of a ``tools/call`` written once, for every face (relay, held stream, aggregate).

``admit`` takes a call through decide, the pin check, approval and limits, then writes the
call's one decision record and its metrics once the final effect is known. The faces keep
only their wire format: how a held call is kept alive (``hold``), how a denial is written,
how the call is forwarded; ``timed_upstream`` around that forward times the upstream on
every face.

Two clocks are kept apart: the decision latency (``latency_ms``, ``celgate_decision_seconds``)
is the gateway's own time; a human's approval wait is measured on its own
(``approval_wait_ms``, ``celgate_approval_wait_seconds``), so one slow approver does not make
every decision look slow.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.errors import BackendUnavailable
from gateway.pipeline.enforce import apply_limits, check_arg_types, check_pin, check_variant
from gateway.policy import Call, Decision, decide
from gateway.policy.matching import candidates
from gateway.policy.secrets import secret_paths
from gateway.telemetry.audit import log, new_decision_id

if TYPE_CHECKING:
    from gateway.pipeline.gateway import Gateway

Clock = Callable[[], float]
#: Called between polls while a human decides, with the seconds waited so far.
Tick = Callable[[float], Awaitable[None]]
#: Waits for the human (calling the tick given, if any) and returns the resolved decision.
Wait = Callable[[Tick | None], Awaitable[Decision]]
#: A face's way to hold a ``wait``-mode call: given the held decision and ``wait``, it opens
#: whatever keeps the caller waiting, runs ``wait`` and returns its decision (or the held
#: decision unchanged when the caller went away first).
Hold = Callable[[Decision, Wait], Awaitable[Decision]]
#: A face's way to ask the human at the client (``approval: {mode: elicit}``): given the held
#: decision and a tick to call once a human was waited for, it returns the decision after
#: asking (allowed, denied, or still held when the answer comes on a later request).
Elicit = Callable[[Decision, Tick], Coroutine[Any, Any, Decision]]


@dataclass(frozen=True, slots=True)
class Admission:
    """The final decision for one call, as recorded."""

    decision: Decision
    decision_id: str
    latency: float  # seconds of the gateway's own time
    approval_wait: float | None  # seconds a human kept the call waiting, if one did

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


async def admit(
    gw: Gateway,
    call: Call,
    *,
    hold: Hold | None = None,
    elicit: Elicit | None = None,
    clock: Clock = time.perf_counter,
    resume: bool = False,
) -> Admission:
    """Decide, check the pin, resolve an approval, take the limits, then record once.

    An approval in ``retry`` mode answers at once; in ``wait`` mode the call waits, inside
    ``hold`` when the face gives one; in ``elicit`` mode the face asks the client's human
    (``elicit``), or, when it cannot (no such face, a client without elicitation), the rule's
    ``fallback`` mode applies. Without an approval service a held call stays held.
    If the call is interrupted the record still gets written: a cancelled call (the caller
    went away) with the decision as far as it got, and the cancellation goes on; a failure
    (a store, say) is a deny with ``error: internal_error``, returned as any refusal is.
    """
    started = clock()
    call = await schema_read(gw, call)
    decision = verdict(gw, call)
    decision_id = new_decision_id()
    timer = _WaitTimer(clock)
    waited_on: list[str] = []  # the approval request a held call waits for, once it does
    try:
        # ``resume``: the call continues one already approved (its state says which, and is
        # checked and used once by ``elicit``), whatever mode its approval was given in.
        resumed = resume and elicit is not None and decision.effect != "deny"
        if _in_band(decision) or resumed:
            if elicit is None:
                decision = _fallback(decision)
            else:  # asked (or still being asked) at the client: no out-of-band request
                asked_under = decision.revision
                decision = await timer.run(elicit(decision, timer.ticking(None)))
                if decision.allowed and not resumed:  # approved on the stream it waited on
                    decision = _decided_again(gw, call, decision, asked_under, by_client=True)
        approved: str | None = None
        if decision.effect == "require_approval" and gw.approvals and not _in_band(decision):
            held_under = decision.revision
            decision = await _approve(gw, call, decision, decision_id, hold, timer, waited_on)
            if waited_on and decision.effect == "require_approval":  # its caller went away
                decision = _withdrawn(decision, waited_on[-1], decision_id)
            if decision.allowed:  # decided again, with its pin and argument types
                again = _decided_again(gw, call, decision, held_under)
                if not again.allowed and decision.approval_id:
                    await gw.approvals.overrule(decision.approval_id, again.reason)
                decision = again
            approved = decision.approval_id if decision.allowed else None
        try:
            if not (resumed and decision.allowed):  # a continuation: its first round took them
                decision = await apply_limits(gw, decision)
        finally:
            if approved and gw.approvals and not decision.allowed:
                # A limit refused the approved call (a limiter backend that fails refuses
                # too): it never runs, so the operator's approval stays for the identical
                # call made again.
                await gw.approvals.release(approved)
    except Exception as exc:
        # A failure on the way (a store, an elicitation): the call goes no further, and its
        # record says so rather than showing the decision as far as it got (an allow, say).
        # Its caller is told as every refusal is, a tool error under HTTP 200: a 503 read as
        # a broken transport to the TypeScript SDK and the Inspector, which never read why
        # (red-team wave 37). An outage of a shared store is logged by its store.
        reason = "the gateway failed while deciding this call"
        if isinstance(exc, BackendUnavailable):
            reason = "a store this call needs (approvals) is unavailable: try again later"
        else:
            log.exception("admission.failed", server=call.server, tool=call.tool)
        failed = replace(
            decision,
            effect="deny",
            reason=reason,
            error="internal_error",
            error_detail=type(exc).__name__,
            limits=(),
        )
        return _record(gw, call, failed, decision_id, clock() - started, timer.waited)
    except BaseException:  # cancelled (the caller went away): recorded as far as it got
        if waited_on and decision.effect == "require_approval":  # withdrawn while it waited
            decision = _withdrawn(decision, waited_on[-1], decision_id)
        _record(gw, call, decision, decision_id, clock() - started, timer.waited)
        raise
    return _record(gw, call, decision, decision_id, clock() - started, timer.waited)


def _withdrawn(decision: Decision, approval_id: str, decision_id: str) -> Decision:
    """A held call its client gave up on while it waited: its record names the approval
    request (the desk shows it), and says so; it was recorded as the rule's plain hold."""
    log.info("approval.withdrawn", approval_id=approval_id, decision_id=decision_id)
    reason = f"withdrawn by its client while it waited for approval {approval_id}"
    return replace(decision, reason=reason, approval_id=approval_id, error="approval_withdrawn")


def _decided_again(
    gw: Gateway, call: Call, approved: Decision, held_under: str, by_client: bool = False
) -> Decision:
    """An approved call, decided again as it would be now: the rules in force, its tool's
    pin, its arguments' types (a tool its server changed while the call waited is refused
    as any call to it is now; only a reload used to decide it again, and a held call ran on
    a tool its pin refused). One now denied is denied (its approval overruled); one the
    rules allow or hold runs on its approval, under their limits. An approval its client
    gave (``by_client``, mode ``elicit``) is no operator's: a call the rules now hold for
    an operator is held so, as a new call would be (a reload from elicit to wait during the
    question ran the call on the client's word: red-team wave 59)."""
    fresh = verdict(gw, _classified(gw, call))  # its kind and risk under these rules too
    if fresh.effect == "deny":
        changed = "the policy" if gw.policy.revision != held_under else "what it calls"
        reason = f"{changed} changed while the call was held: {fresh.reason}"
        return replace(fresh, reason=reason, approval_id=approved.approval_id)
    if by_client and fresh.effect == "require_approval" and not _in_band(fresh):
        return fresh
    return replace(approved, limits=fresh.limits, revision=fresh.revision)


async def schema_read(gw: Gateway, call: Call) -> Call:
    """``call``, after reading its server's tools again when the catalogue lacks its tool
    (one added since, or a start gap): its schema is then known to ``verdict``, and its kind
    and risk (by its annotations, not only its name) to the rules."""
    server = call.server
    if gw.relist is None or not server or (server, call.tool) in gw.catalog:
        return call
    policy = gw.policy
    if policy.default == "deny" and next(candidates(policy, server, call.tool), None) is None:
        # No entry names it: denied whatever its server says of it. Read again, a name no
        # server lists waited for the server's tools, and a hidden one (listed) did not: the
        # time told an agent which names exist (red-team wave 40).
        return call
    await gw.relist(server)
    return _classified(gw, call)


def _classified(gw: Gateway, call: Call) -> Call:
    """``call`` with what CEL sees as ``tool`` as the catalogue and the policy say now."""
    return replace(call, info=gw.tool_info(call.server or "", call.tool))


def verdict(gw: Gateway, call: Call) -> Decision:
    """The policy's decision on ``call`` with its pin and its arguments' types checked: what
    ``admit`` starts from, with nothing taken (no limits, no approval) and nothing recorded."""
    decided = check_pin(gw, call, decide(gw.policy, call, gw.now()))
    return check_arg_types(gw, call, check_variant(gw, call, decided))


async def _approve(
    gw: Gateway,
    call: Call,
    decision: Decision,
    decision_id: str,
    hold: Hold | None,
    timer: _WaitTimer,
    waited_on: list[str],
) -> Decision:
    approvals = gw.approvals
    assert approvals is not None

    async def wait(tick: Tick | None) -> Decision:
        ticking = timer.ticking(tick)
        resolving = approvals.resolve(call, decision, decision_id, ticking, waited_on.append)
        return await timer.run(resolving)

    mode = decision.approval.mode if decision.approval else "wait"
    if hold is not None and mode == "wait":
        return await hold(decision, wait)
    return await wait(None)


def _in_band(decision: Decision) -> bool:
    approval = decision.approval
    return (
        decision.effect == "require_approval" and approval is not None and approval.mode == "elicit"
    )


def _fallback(decision: Decision) -> Decision:
    """An ``elicit`` approval the client cannot be asked for: its out-of-band mode."""
    assert decision.approval is not None
    return replace(decision, approval=replace(decision.approval, mode=decision.approval.fallback))


class _WaitTimer:
    """Times the approval step, and knows whether a human was waited for: the approval
    service ticks only between polls of a pending request, so one tick means a wait. An
    approval found already decided (or answered at once in ``retry`` mode) is a store
    lookup, part of the decision's own time."""

    __slots__ = ("_clock", "_seconds", "_ticked")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ticked = False
        self._seconds = 0.0

    def ticking(self, tick: Tick | None) -> Tick:
        async def on_tick(elapsed: float) -> None:
            self._ticked = True
            if tick is not None:
                await tick(elapsed)

        return on_tick

    async def run(self, work: Coroutine[Any, Any, Decision]) -> Decision:
        begun = self._clock()
        try:
            return await work
        finally:
            self._seconds += self._clock() - begun

    @property
    def waited(self) -> float | None:
        return self._seconds if self._ticked else None


def refused_unread(
    gw: Gateway, call: Call, reason: str, rule: str = "route", error: str = "no_tool"
) -> Admission:
    """A ``tools/call`` refused before any policy could read it (on ``/mcp``, a name no
    server has; anywhere, a name that is none, or arguments that are no object), recorded
    as a deny all the same: an agent probing for tool names was in neither the log nor the
    metrics. ``call`` carries no arguments: no entry's ``secret_args`` are known for it."""
    decision = Decision(
        effect="deny", rule=rule, reason=reason, revision=gw.policy.revision, error=error
    )
    return _record(gw, call, decision, new_decision_id(), 0.0, None, args_omitted=True)


def _record(
    gw: Gateway,
    call: Call,
    decision: Decision,
    decision_id: str,
    elapsed: float,
    wait: float | None,
    **extra: Any,
) -> Admission:
    latency = max(elapsed - (wait or 0.0), 0.0)
    log = gw.decisions
    # Always: without the arguments in the record, a digest of a call whose one argument is
    # a short secret (a PIN) still gives it to whoever hashes guesses.
    secret = secret_paths(gw.policy, call.server, call.tool)
    if wait is not None:
        extra["approval_wait_ms"] = round(wait * 1000, 3)
    log.record(decision_id, call, decision, latency * 1000, secret, **extra)
    metrics = gw.metrics
    if metrics is not None:
        known = (call.server or "", call.tool) in gw.catalog
        metrics.decision(call, decision, latency, known=known)
        if wait is not None:
            metrics.approval_wait(wait)
    return Admission(decision, decision_id, latency, wait)


class timed_upstream:  # lower case: it reads as the function it stands for
    """Around a face's forward: the upstream's time (its answer relayed included) goes to
    ``celgate_upstream_seconds``, whether the forward ends well or not. A class rather than
    ``@asynccontextmanager``: it is on every forwarded call."""

    __slots__ = ("_call", "_clock", "_gw", "_started")

    def __init__(self, gw: Gateway, call: Call, *, clock: Clock = time.perf_counter) -> None:
        self._gw = gw
        self._call = call
        self._clock = clock
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = self._clock()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gw.metrics is not None:
            self._gw.metrics.upstream(self._call, self._clock() - self._started)
