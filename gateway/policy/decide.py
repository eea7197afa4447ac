"""``decide(policy, call, now) -> Decision``: pure, synchronous, no I/O, no logging.

The CEL activation is built lazily: a variable is converted only when a rule reads it, and
at most once per call. ``agent`` and ``tool`` are the same for every call of one grant to one
tool, so their converted forms are kept across calls (keyed by the identity and tool-info
objects themselves, which the gateway keeps while they are current). Any evaluation error
denies the call with its own error code and the expression that failed (fail closed).

What an agent is told names a rule by its id or by ``file:line`` relative to the policy root
(the loader labels them so), and an evaluation error by its code only: the engine's own text
(Python exception messages, reprs) stays in ``error_detail``, for the decision record.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway.errors import PolicyEvalError
from gateway.policy.cel import Engine, Program
from gateway.policy.matching import candidates
from gateway.policy.model import (
    AppliedLimit,
    Call,
    CompiledPolicy,
    Decision,
    Effect,
    LimitSpec,
    Rule,
    ShadowResult,
    ToolEntry,
    agent_value,
    session_value,
)
from gateway.policy.secrets import mask_args, secret_paths

# (engine, variable, key) -> (the object the value was made from, the converted value).
# A hit counts only if that object is the very one the call carries, so an id reused after
# garbage collection can never return another caller's values. Cleared when it grows large.
_SHARED: dict[tuple[int, str, Any], tuple[Any, Any]] = {}
_SHARED_MAX = 4096
MAX_SHARED_NAME = 128


class Context:
    """The call's CEL variables, converted on first use."""

    __slots__ = ("_args", "_cache", "call", "engine", "now")

    def __init__(self, call: Call, now: datetime, engine: Engine) -> None:
        self.call = call
        self.now = now
        self.engine = engine
        self._cache: dict[str, Any] = {}
        self._args: dict[frozenset[str], Any] = {}

    def activation(self, program: Program) -> dict[str, Any]:
        """The variables ``program`` reads; of the arguments, only the fields it names."""
        cache = self._cache
        fields: frozenset[str] | None = getattr(program, "args_fields", None)
        out: dict[str, Any] = {}
        for name in program.variables:
            if name == "args" and fields is not None:
                out[name] = self._some_args(fields, program.source)
                continue
            if name not in cache:
                cache[name] = self._convert(name, program.source)
            out[name] = cache[name]
        return out

    def _some_args(self, fields: frozenset[str], source: str) -> Any:
        """Only the named top-level fields: a large argument a rule never reads costs nothing."""
        found = self._args.get(fields)
        if found is None:
            args = self.call.args
            picked = {k: args[k] for k in fields if k in args}
            found = self._args[fields] = self._convert_value("args", picked, source)
        return found

    def _convert(self, name: str, source: str) -> Any:
        if name == "now":
            return self.engine.timestamp(self.now)
        call = self.call
        if name == "agent":
            anchor: Any = call.identity
            key: Any = id(anchor)
        elif name == "tool":
            anchor = call.info
            key = (call.tool, call.server, id(anchor))
        else:
            return self._convert_value(name, self._plain(name), source)
        slot = (id(self.engine), name, key)
        hit = _SHARED.get(slot)
        if hit is not None and hit[0] is anchor:
            return hit[1]
        value = self._convert_value(name, self._plain(name), source)
        if name == "tool" and len(call.tool) > MAX_SHARED_NAME:
            return value  # a caller's long name is not kept (4,096 of them would be gigabytes)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[slot] = (anchor, value)
        return value

    def _convert_value(self, name: str, value: Any, source: str) -> Any:
        try:
            return self.engine.convert(value)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            detail = f"cannot convert {name}: {exc}"
            raise PolicyEvalError("cel.bad_value", source, detail) from None

    def _plain(self, name: str) -> Any:
        call = self.call
        if name == "args":
            return dict(call.args)
        if name == "tool":
            info = call.info
            return {
                "name": call.tool,
                "server": call.server,
                "risk": info.risk,
                "kind": info.kind,
                "annotations": dict(info.annotations),
            }
        if name == "agent":
            ident = call.identity
            return {
                "id": ident.agent,
                "grant": ident.grant,
                "roles": list(ident.roles),
                "attrs": dict(ident.attrs),
                # an access token's claims (gateway.auth.agent.Agent); a key has none
                "claims": dict(getattr(ident, "claims", None) or {}),
            }
        if name == "session":
            return {"id": call.session}
        # request
        # always six digits of fraction: a whole second wrote none, and a cut-off compared as
        # text ("...17:00:00.000000+00:00") allowed the call at exactly that second
        return {"time": self.now.isoformat(timespec="microseconds"), "ip": call.client_ip}


#: The one ``scope: tool`` bucket of a server's names it does not list (``ToolInfo.listed``).
UNLISTED_TOOL = "<unlisted>"


def _bind(spec: LimitSpec, call: Call) -> AppliedLimit:
    scope = spec.scope
    if scope == "grant":
        value = call.identity.grant
    elif scope == "agent":
        value = agent_value(call.identity.grant, call.identity.agent)
    elif scope == "session":
        # A caller without a session is keyed by its grant and agent: one bucket shared by
        # every sessionless caller (or every user of one OAuth client) would let one drain
        # all of them.
        identity = call.identity
        value = session_value(call.server, identity.grant, call.session, identity.agent)
    elif scope == "tool":
        tool = call.tool if call.info.listed else UNLISTED_TOOL
        value = f"{call.server}/{tool}" if call.server else tool
    else:
        value = "*"
    return AppliedLimit(spec.counter, scope, value, spec.max, spec.window, spec.failure_mode)


def _default_reason(effect: Effect, call: Call, label: str) -> str:
    if effect == "allow":
        return f"allowed by {label}"
    if effect == "require_approval":
        return f"calling {call.tool!r} requires human approval ({label})"
    return f"calling {call.tool!r} is denied by policy ({label})"


class _Decider:
    def __init__(self, policy: CompiledPolicy, call: Call, now: datetime, engine: Engine) -> None:
        self.policy = policy
        self.call = call
        self.ctx = Context(call, now, engine)
        self.shadow: list[ShadowResult] = []

    def make(
        self,
        effect: Effect,
        label: str,
        reason: str | None,
        entry: ToolEntry | None,
        rule: Rule | None = None,
    ) -> Decision:
        limits: tuple[AppliedLimit, ...] = ()
        if entry is not None and effect != "deny":
            limits = tuple(_bind(spec, self.call) for spec in entry.limits)
        approval = None
        secret: tuple[str, ...] = ()
        if effect == "require_approval":
            approval = (rule.approval if rule else None) or (entry.approval if entry else None)
            # What a held call's request keeps is masked as its record is: by every entry
            # that matches the tool, not only the one that decided.
            secret = secret_paths(self.policy, self.call.server, self.call.tool)
        return Decision(
            effect=effect,
            rule=label,
            reason=reason or _default_reason(effect, self.call, label),
            revision=self.policy.revision,
            entry=entry.key if entry else None,
            limits=limits,
            approval=approval,
            shadow=tuple(self.shadow),
            decided_at=self.ctx.now,
            secret_args=secret,
        )

    def error(self, exc: PolicyEvalError, label: str, entry: ToolEntry) -> Decision:
        reason = f"policy condition {label} could not be evaluated ({exc.code}); denied"
        decision = self.make("deny", label, reason, entry)
        detail = self.detail(exc)
        return replace(decision, error=exc.code, expression=exc.expression, error_detail=detail)

    def detail(self, exc: PolicyEvalError) -> str:
        """The engine's message, for the record; withheld when the call carries a secret
        argument: the engine writes operands into it (``StringType('hunter2')``), and the
        record, ``/admin/decisions`` and the live feed would show what they mask."""
        paths = secret_paths(self.policy, self.call.server, self.call.tool)
        if paths and mask_args(self.call.args, paths) != self.call.args:
            return f"{exc.code} (the engine's message is withheld: the call has secret arguments)"
        return exc.detail

    def default(self, entry: ToolEntry | None) -> Decision:
        policy = self.policy
        if policy.default == "deny":
            reason = f"tool {self.call.tool!r} is not allowed by policy (default deny)"
            return self.make("deny", "default", reason, None)
        return self.make("allow", "default", "allowed by the policy default", entry)

    def entry(self, entry: ToolEntry) -> Decision:
        for rule in entry.rules:
            try:
                holds = rule.when is None or rule.when.evaluate(self.ctx.activation(rule.when))
            except PolicyEvalError as exc:
                if rule.mode == "shadow":
                    self.shadow.append(ShadowResult(rule.label, "deny", self.detail(exc), exc.code))
                    continue
                return self.error(exc, rule.label, entry)
            if not holds:
                continue
            if rule.mode == "shadow":
                reason = rule.reason or _default_reason(rule.action, self.call, rule.label)
                self.shadow.append(ShadowResult(rule.label, rule.action, reason))
                continue
            return self.make(rule.action, rule.label, rule.reason, entry, rule)
        if entry.action is not None:
            return self.make(entry.action, str(entry.where), entry.reason, entry)
        if entry.enforces_rules:
            return self.default(entry)
        return self.make("allow", str(entry.where), entry.reason, entry)

    def run(self) -> Decision:
        for entry in candidates(self.policy, self.call.server, self.call.tool):
            decision = self.entry(entry)
            if entry.mode == "shadow":
                self.shadow.append(
                    ShadowResult(decision.rule, decision.effect, decision.reason, decision.error)
                )
                continue
            if entry.decides:
                return decision
            # it only tried rules (each in the shadow list): the next entry decides
        return self.default(None)


def decide(
    policy: CompiledPolicy,
    call: Call,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> Decision:
    """Decide one call. ``now`` is passed in so that time-based rules are testable; it is
    taken in UTC, as the gateway takes it (``request.time`` is its text, so the same instant
    with another offset would compare otherwise), and a time without an offset is UTC."""
    when = datetime.now(UTC) if now is None else now if now.tzinfo is UTC else as_utc(now)
    return _Decider(policy, call, when, engine or policy.engine).run()


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a time without an offset is taken as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
