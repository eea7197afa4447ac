"""After ``decide``: the pin check, and rate limits for what may go ahead
(``gateway.pipeline.admission`` runs them in order, with the approval between).

Limits apply to what is allowed or approved, so a call still waiting for a human takes no
tokens, and a denied call takes none either.
"""

from __future__ import annotations

from dataclasses import replace
from time import perf_counter
from typing import TYPE_CHECKING

from gateway.inventory.shapes import MAX_CHECKED, TooManyValues, mismatch
from gateway.policy.matching import fold, folded_glob
from gateway.policy.model import Call, Decision, LimitState
from gateway.ratelimit.base import Bucket, LimitResult

if TYPE_CHECKING:
    from gateway.pipeline.gateway import Gateway


def _state(result: LimitResult) -> LimitState:
    remaining = {s.counter: round(s.remaining, 3) for s in result.states}
    return LimitState(
        remaining=remaining,
        refused_by=result.refused_by,
        retry_after=result.retry_after,
        backend_error=result.backend_error,
        failed_open=result.failed_open,
    )


def _refusal(decision: Decision, result: LimitResult) -> str | None:
    if result.admitted:
        return None
    if result.backend_error:
        return "rate limit backend unavailable"
    limit = next((lim for lim in decision.limits if lim.counter == result.refused_by), None)
    if limit is None:
        return f"rate limit {result.refused_by} exceeded"
    # A token bucket: a burst of ``max``, then ``max`` per window (not "at most max in any
    # window": a full bucket and its refill together admit up to twice that in one window).
    return (
        f"rate limit {limit.counter!r} exceeded: a bucket of {limit.max} calls, refilled at "
        f"{limit.max} per {limit.window:g} s ({limit.scope} {limit.scope_value})"
    )


def check_pin(gw: Gateway, call: Call, decision: Decision) -> Decision:
    """A tool whose definition changed since it was pinned is refused, whatever the rules say."""
    if decision.effect == "deny":
        return decision
    why = gw.pins.refusal(call.server or "", call.tool)
    if why is None:
        return decision
    return replace(
        decision, effect="deny", rule="pins", reason=why, error="tool_changed", limits=()
    )


def check_arg_types(gw: Gateway, call: Call, decision: Decision) -> Decision:
    """An argument whose JSON type its tool's ``inputSchema`` does not allow is refused,
    whatever the rules say: the upstream would convert it (``"true"`` to ``true``) and run
    a call the rules never saw (``gateway.inventory.shapes``). A denial stands, except one
    because a condition could not be evaluated (``cel.*``, often from that very argument's
    type): the argument's reason names what to mend, as the docs promise ("before any
    rule"), where the engine's says only that a condition failed."""
    if decision.effect == "deny" and not (decision.error or "").startswith("cel."):
        return decision
    shape = gw.arg_shapes.get((call.server or "", call.tool))
    if shape is None:
        return decision
    try:
        why = mismatch(shape, call.args)
    except TooManyValues:
        why = f"the arguments hold more than {MAX_CHECKED} values, or are nested too deep, to check"
    if why is None:
        return decision
    return replace(
        decision, effect="deny", rule="schema", reason=why, error="argument_type", limits=()
    )


def check_variant(gw: Gateway, call: Call, decision: Decision) -> Decision:
    """A name its server has not listed that differs from a listed tool, or from a tool the
    policy names, only in case, width, spacing or ``-``/``_`` is refused, whatever the rules
    say: under ``default: allow`` a deny of ``wipe_records`` let ``WIPE_RECORDS`` and
    ``wipe_records `` through to a server that matches names loosely (red-team wave 38).
    Told as a name no server has."""
    if call.info.listed or decision.effect == "deny":
        return decision
    names, folds = gw.folded_names(call.server or "")
    if call.tool in names:
        return decision  # itself
    if fold(call.tool) not in folds and not _like_a_glob(gw, call):
        return decision  # like none
    reason = f"no tool named {call.tool!r} is listed by server {call.server or ''!r}"
    return replace(decision, effect="deny", rule="route", reason=reason, error="no_tool", limits=())


def _like_a_glob(gw: Gateway, call: Call) -> bool:
    """Whether the name is one a glob of the policy does not match, read as a loose server
    reads names, it does: ``DELETE_ALL`` or ``delete-all`` under ``delete_*`` (a deny or an
    approval written with a glob was skipped by another spelling: red-team wave 57)."""
    folded = fold(call.tool)
    return any(
        glob.server in (None, call.server)
        and not glob.matches(call.tool)
        and folded_glob(glob.pattern).fullmatch(folded) is not None
        for glob in gw.policy.globs
    )


async def apply_limits(gw: Gateway, decision: Decision) -> Decision:
    if not decision.allowed or not decision.limits:
        return decision
    buckets = [
        Bucket(lim.counter, lim.key, lim.max, lim.window, lim.failure_mode)
        for lim in decision.limits
    ]
    started = perf_counter()
    result = await gw.limiter.acquire(buckets)
    if gw.metrics is not None:
        gw.metrics.limiter(result, perf_counter() - started)
    return decision.with_limit_state(_state(result), _refusal(decision, result))
