"""The compiled policy and the values that go in and out of ``decide``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from gateway.errors import SourceLocation
from gateway.policy.cel import DEFAULT_ENGINE, Engine, Program

Effect = Literal["allow", "deny", "require_approval"]
Scope = Literal["grant", "agent", "session", "tool", "global"]
FailureMode = Literal["closed", "open"]
Mode = Literal["enforce", "shadow"]
ApprovalMode = Literal["wait", "retry", "elicit"]
#: Out-of-band mode for an ``elicit`` approval when the client cannot be asked in band.
FallbackMode = Literal["wait", "retry"]
#: The values ``tool.risk`` and ``tool.kind`` take (gateway.policy.risk).
RISKS = ("low", "medium", "high")
KINDS = ("read", "write", "delete", "execute")

EFFECTS: tuple[Effect, ...] = ("allow", "deny", "require_approval")
SCOPES: tuple[Scope, ...] = ("grant", "agent", "session", "tool", "global")
WINDOWS: Mapping[str, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A token bucket as written: ``max`` calls per ``window`` seconds, keyed by ``scope``."""

    counter: str
    window: float
    max: int
    scope: Scope
    failure_mode: FailureMode
    where: SourceLocation


@dataclass(frozen=True, slots=True)
class Approval:
    """How a held call waits: keep the request open (``wait``), answer at once (``retry``), or
    ask the human at the client in band (``elicit``; ``fallback`` when the client cannot)."""

    mode: ApprovalMode = "wait"
    timeout: float = 300.0
    fallback: FallbackMode = "retry"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered rule of an entry; ``when=None`` always holds."""

    action: Effect
    where: SourceLocation
    id: str | None = None
    when: Program | None = None
    reason: str | None = None
    mode: Mode = "enforce"
    approval: Approval | None = None

    @property
    def label(self) -> str:
        return self.id or str(self.where)


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """A ``tools`` entry: its key, how it matches, and what it says."""

    key: str
    server: str | None
    pattern: str
    is_glob: bool
    where: SourceLocation
    action: Effect | None = None
    reason: str | None = None
    rules: tuple[Rule, ...] = ()
    limits: tuple[LimitSpec, ...] = ()
    approval: Approval | None = None
    risk: str | None = None
    kind: str | None = None
    mode: Mode = "enforce"
    matcher: re.Pattern[str] | None = None
    # Argument paths (``password``, ``auth.token``) whose values no approver or listing sees.
    secret_args: tuple[str, ...] = ()

    def matches(self, tool: str) -> bool:
        if self.matcher is None:
            return tool == self.pattern
        return self.matcher.fullmatch(tool) is not None

    @property
    def enforces_rules(self) -> bool:
        """Whether a rule of its own may decide: then a call no rule decides falls to the
        policy default."""
        return any(rule.mode != "shadow" for rule in self.rules)

    @property
    def decides(self) -> bool:
        """Whether the entry decides a call it matches. A shadow entry never does; nor does
        one that only tries rules (every rule in shadow mode) or only describes the tool
        (``approval:``, ``risk:``, ``kind:``, ``secret_args:``, ``reason:``), with no action or
        limit of its own: the next entry or the default decides, as without it. Such an
        entry decided as ``{}`` (allowed): trying a rule on ``delete_note`` under
        ``"delete_*": {action: require_approval}`` let every call of it through (red-team
        wave 46)."""
        if self.mode == "shadow":
            return False
        if self.action is not None or self.limits or self.enforces_rules:
            return True
        # Rules only tried, or settings that only describe the tool (how a hold waits, its
        # risk or kind, its secret arguments, a reason with nothing it is the reason of):
        # ``{approval: {mode: retry}}`` under ``"delete_*": {action: require_approval}``
        # (red-team wave 59), and ``purge_notes: {risk: high}`` or ``sign_in:
        # {secret_args: [password]}`` beside ``"*"`` rules holding high-risk tools (wave
        # 61), decided as ``{}`` and let the call run unapproved. ``{}`` itself (a
        # ``description`` at most) is "allowed, no conditions".
        return not self.describes_only

    @property
    def describes_only(self) -> bool:
        """Whether the entry says things of the tool (``risk``, ``kind``, ``secret_args``,
        ``approval``, ``reason``, rules only tried) and nothing of whether it may run."""
        if self.action is not None or self.limits or self.enforces_rules:
            return False
        return bool(
            self.rules
            or self.approval is not None
            or self.risk is not None
            or self.kind is not None
            or self.secret_args
            or self.reason is not None
        )

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Sort key, highest first: server-qualified, then exact, then literal characters."""
        literal = sum(1 for ch in self.pattern if ch not in "*?")
        return (self.server is not None, not self.is_glob, literal)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A loaded policy: entries indexed for matching, the default, and its revision hash."""

    default: Effect
    exact: Mapping[tuple[str | None, str], ToolEntry]
    globs: tuple[ToolEntry, ...]
    revision: str
    sources: tuple[str, ...]
    default_where: SourceLocation | None = None
    engine: Engine = DEFAULT_ENGINE  # the engine its conditions were compiled with

    @property
    def entries(self) -> tuple[ToolEntry, ...]:
        return (*self.exact.values(), *self.globs)


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """What the gateway knows of an upstream tool (for ``tool.*`` in CEL)."""

    risk: str = "unknown"
    kind: str = "unknown"
    annotations: Mapping[str, Any] = field(default_factory=dict)
    #: False for a name its server has not listed (made up, or not listed yet): a ``scope:
    #: tool`` limit keys every such name of a server to one bucket, so names a caller makes
    #: up cannot grow the limiter without bound.
    listed: bool = True


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: a grant and what it carries."""

    grant: str = "anonymous"
    agent: str = "anonymous"
    roles: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """Whose a session, an event id or an in-band question is: the grant and, within it,
        the agent (the users of one OAuth client share a grant, never each other's sessions).
        Length-prefixed, so no two (grant, agent) pairs read the same."""
        return f"{len(self.grant)}:{self.grant}{self.agent}"


ANONYMOUS = Identity()


@dataclass(frozen=True, slots=True)
class Call:
    """One ``tools/call`` as the policy sees it."""

    tool: str
    args: Mapping[str, Any] = field(default_factory=dict)
    server: str | None = None
    identity: Identity = ANONYMOUS
    session: str | None = None
    client_ip: str | None = None
    info: ToolInfo = field(default_factory=ToolInfo)


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """A limit bound to this call: the bucket key is the counter plus the scope's value."""

    counter: str
    scope: Scope
    scope_value: str
    max: int
    window: float
    failure_mode: FailureMode

    @property
    def key(self) -> str:
        return f"{self.counter}|{self.scope}={key_part(self.scope_value)}"


def key_part(value: str) -> str:
    """A scope's value as it goes into a bucket key: ``|`` and ``=`` escaped, since callers
    choose some values (a tool's name), and ``x|grant=beta`` must not read as beta's bucket."""
    return value.replace("%", "%25").replace("|", "%7C").replace("=", "%3D")


def _unescaped(part: str) -> str:
    """``key_part`` undone (``%25`` last: every ``%`` it leaves starts one of the three)."""
    return part.replace("%3D", "=").replace("%7C", "|").replace("%25", "%")


def session_value(server: str | None, grant: str, session: str | None, agent: str = "") -> str:
    """A ``scope: session`` bucket's value: the session of one server and one grant (a
    session id is the upstream's, and two upstreams may hand out the same one); a caller
    without a session (every 2026-07-28 call) is keyed by its grant and agent, as
    ``scope: agent`` is (keyed by the grant alone, one user of an OAuth client emptied every
    other user's bucket). ``/`` in the grant is escaped, so that the grant can be read back
    (:func:`bucket_grant`). A session's bucket names its agent too (escaped as the grant
    is): an upstream that hands every client one session id had the users of one OAuth
    client draw from one bucket (red-team wave 35)."""
    if not session:
        return f"g:{_grant_part(grant)}/{agent}"
    return f"s:{server or ''}/{_grant_part(grant)}/{_grant_part(agent)}/{session}"


def agent_value(grant: str, agent: str) -> str:
    """A ``scope: agent`` bucket's value: the agent within its grant. Keyed by the agent's
    name alone, a key's agent and an OAuth user whose claim reads the same (or an agent of
    another grant) drew from one bucket: one could empty the other's."""
    return f"{_grant_part(grant)}/{agent}"


def _grant_part(grant: str) -> str:
    """A grant as the first part of a value, ``/`` escaped (read back by
    :func:`bucket_grant`)."""
    return grant.replace("%", "%25").replace("/", "%2F")


def _grant_of_part(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


def bucket_grant(key: str) -> str | None:
    """The grant whose bucket ``key`` (``counter|scope=value``, as stored) is: a
    ``scope: grant`` bucket's, a ``scope: agent`` one's (an agent of that grant) or a
    ``scope: session`` one's; None for other scopes."""
    scope, _, part = key.rpartition("|")[2].partition("=")
    value = _unescaped(part)
    if scope == "grant":
        return value
    if scope == "agent":
        grant, slash, _ = value.partition("/")
        return _grant_of_part(grant) if slash else None
    if scope != "session":
        return None
    if value.startswith("g:"):
        grant, slash, _ = value[2:].partition("/")
        return _grant_of_part(grant) if slash else value[2:]  # (or as stored before the agent)
    pieces = value.split("/", 2)
    if not value.startswith("s:") or len(pieces) != 3:
        return None
    return _grant_of_part(pieces[1])


@dataclass(frozen=True, slots=True)
class LimitState:
    """What the limiter said: remaining tokens per counter, and when to retry if refused."""

    remaining: Mapping[str, float]
    refused_by: str | None = None
    retry_after: float | None = None
    backend_error: bool = False
    failed_open: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The one answer for a call, used both to reply to the agent and to write the record."""

    effect: Effect
    rule: str
    reason: str
    revision: str
    entry: str | None = None
    limits: tuple[AppliedLimit, ...] = ()
    error: str | None = None
    expression: str | None = None
    # The engine's own message for an evaluation error: for the record, never for the agent.
    error_detail: str | None = None
    approval: Approval | None = None
    limit_state: LimitState | None = None
    shadow: tuple[ShadowResult, ...] = ()
    decided_at: datetime | None = None
    approval_id: str | None = None
    # A held call's secret argument paths (every matching entry's ``secret_args``): masked in
    # what its approval request keeps.
    secret_args: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def with_limit_state(self, state: LimitState, refused_reason: str | None) -> Decision:
        """The same decision after the limiter ran: a refusal turns it into a deny."""
        if refused_reason is None:
            return replace(self, limit_state=state)
        return replace(
            self, effect="deny", reason=refused_reason, limit_state=state, error="rate_limited"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (CLI output, structured denials, decision records)."""
        out: dict[str, Any] = {
            "effect": self.effect,
            "rule": self.rule,
            "reason": self.reason,
            "revision": self.revision,
            "entry": self.entry,
            "limits": [
                {
                    "counter": lim.counter,
                    "scope": lim.scope,
                    "key": lim.key,
                    "max": lim.max,
                    "window": lim.window,
                    "failure_mode": lim.failure_mode,
                }
                for lim in self.limits
            ],
        }
        if self.error:
            out["error"] = self.error
        if self.expression:
            out["expression"] = self.expression
        if self.error_detail:
            out["error_detail"] = self.error_detail
        if self.approval:
            out["approval"] = {"mode": self.approval.mode, "timeout": self.approval.timeout}
        if self.limit_state:
            st = self.limit_state
            out["limit_state"] = {
                "remaining": dict(st.remaining),
                "refused_by": st.refused_by,
                "retry_after": st.retry_after,
                "backend_error": st.backend_error,
                "failed_open": st.failed_open,
            }
        if self.shadow:
            out["shadow"] = [s.to_dict() for s in self.shadow]
        if self.approval_id:
            out["approval_id"] = self.approval_id
        return out


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """What a rule in shadow mode would have done; logged, never enforced."""

    rule: str
    would_effect: Effect
    reason: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "would_effect": self.would_effect,
            "reason": self.reason,
        }
        if self.error:
            out["error"] = self.error
        return out
