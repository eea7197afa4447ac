"""Which tools a caller could ever be allowed to call, for filtering ``tools/list``.

A tool is listed unless the policy denies it for this caller whatever the arguments. Conditions
that read only ``agent``, ``tool`` and ``session`` are evaluated now (they cannot change for
this caller); conditions on ``args``, ``now`` or ``request`` are unknown, so a tool allowed
only under some argument conditions stays listed. A fixed condition that fails to evaluate
denies every call that reaches it (fail closed), so it hides the tool as a deny would. Pure,
like ``decide``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from gateway.errors import PolicyEvalError
from gateway.policy.cel import Engine
from gateway.policy.decide import Context
from gateway.policy.matching import candidates
from gateway.policy.model import Call, CompiledPolicy, Rule, ToolEntry

_STATIC = frozenset({"agent", "tool", "session"})
Truth = bool | None | Literal["error"]


def _truth(rule: Rule, ctx: Context) -> Truth:
    """True or False when the condition is fixed for this caller, None when it depends,
    "error" when it is fixed and cannot be evaluated."""
    program = rule.when
    if program is None:
        return True
    if not program.variables <= _STATIC:
        return None
    try:
        return program.evaluate(ctx.activation(program))
    except PolicyEvalError:
        return "error"


def _may_allow(policy: CompiledPolicy, entry: ToolEntry, ctx: Context) -> bool:
    for rule in entry.rules:
        if rule.mode == "shadow":
            continue
        holds = _truth(rule, ctx)
        if holds == "error":
            return False  # every call that gets this far is denied
        if holds is False:
            continue
        if rule.action != "deny":
            return True
        if holds is True:
            return False
    fallback = entry.action or (policy.default if entry.enforces_rules else "allow")
    return fallback != "deny"


def visible(
    policy: CompiledPolicy,
    call: Call,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> bool:
    """Could ``call.tool`` on ``call.server`` be allowed (or approved) for this caller?"""
    ctx = Context(call, now or datetime.now(UTC), engine or policy.engine)
    for entry in candidates(policy, call.server, call.tool):
        if entry.decides:
            return _may_allow(policy, entry, ctx)
    return policy.default != "deny"
