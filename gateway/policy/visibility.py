"""Which tools a caller could ever be allowed to call, for filtering ``tools/list``.

A tool is listed unless the policy denies it for this caller whatever the arguments. Conditions
that read only ``agent``, ``tool`` and ``session`` are evaluated now (they cannot change for
this caller); conditions on ``args``, ``now`` or ``request`` are unknown, so a tool allowed
only under some argument conditions stays listed. Pure, like ``decide``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.errors import PolicyEvalError
from gateway.policy.cel import Engine
from gateway.policy.decide import Context
from gateway.policy.matching import candidates
from gateway.policy.model import Call, CompiledPolicy, Rule, ToolEntry

_STATIC = frozenset({"agent", "tool", "session"})


def _truth(rule: Rule, ctx: Context) -> bool | None:
    """True or False when the condition is fixed for this caller, None when it depends."""
    program = rule.when
    if program is None:
        return True
    if not program.variables <= _STATIC:
        return None
    try:
        return program.evaluate(ctx.activation(program))
    except PolicyEvalError:
        return None


def _may_allow(policy: CompiledPolicy, entry: ToolEntry, ctx: Context) -> bool:
    for rule in entry.rules:
        if rule.mode == "shadow":
            continue
        holds = _truth(rule, ctx)
        if holds is False:
            continue
        if rule.action != "deny":
            return True
        if holds is True:
            return False
    fallback = entry.action or (policy.default if entry.rules else "allow")
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
        if entry.mode != "shadow":
            return _may_allow(policy, entry, ctx)
    return policy.default != "deny"
