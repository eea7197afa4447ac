"""Human approval of held calls.

An approval request is bound to grant, server, tool, a digest of the arguments and the policy
revision, and it expires. It is single-use: once an approved call has gone through, the same
call needs a new approval; an approval never covers other arguments. State lives in the same
backend as limits (memory, or Valkey so that any replica can approve a call another holds).

Two ways for the agent's call, chosen per rule (``approval: {mode: wait|retry}``):
``wait`` holds the request open until decided or timed out; ``retry`` answers "pending
approval ID" at once, and the identical call made again after approval passes, once.

The approver sees what they approve: a request keeps a bounded copy of the call's arguments
(``preview_args``; long values cut with a visible marker, the digest still binds the exact
call). Fields the policy marks secret (``secret_args``) are masked before anything is kept
(``mask_args``); the digest is of the real values. What can wait is bounded too (``approvals:``
in the config, ``ApprovalsConfig``): past the pending cap of a grant, or of the whole gateway,
a new held call is refused (``approval_queue_full``) and nothing is queued; a pending request
that expires is evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import anyio

from gateway.config.sections import ApprovalsConfig
from gateway.errors import ApprovalError, BackendUnavailable
from gateway.policy.model import Approval, Call, Decision
from gateway.policy.secrets import mask_args
from gateway.telemetry.audit import args_digest, log

Status = Literal["pending", "approved", "denied", "used", "expired"]
Tick = Callable[[float], Awaitable[None]]
#: ``exists``: an identical call (same match) already has a request, made meanwhile by
#: another caller or replica; the caller then uses that one.
Admission = Literal["ok", "grant_full", "total_full", "exists"]
POLL_SECONDS = 0.25
CREATE_TRIES = 3  # a request looked up, found made meanwhile, then gone: try so many times
KEEP_SECONDS = 86400.0  # decided requests stay listable for a day
GRACE_SECONDS = 60.0  # an undecided request is listed as expired this long, then evicted
KEEP_DECIDED = 5000  # at most this many decided requests are kept for the listing
#: An approval given near its request's end stays usable this long after it was given (or
#: its timeout, if shorter): approved 80 ms before the end, the held call (polling) found
#: it expired.
APPROVED_USE_SECONDS = 60.0
#: A used approval stays its call's this long: an approved call that a limit then refuses
#: gives its approval back (``release``), and an identical call in between forgot the used
#: one and made a new request, orphaning the operator's approval (red-team wave 54). Such a
#: call is told the approval was just used.
SETTLING_SECONDS = 5.0
#: Who "decided" a request its client withdrew (a cancel, or gone while it waited).
CLIENT = "client"
#: Who refused an approved call the policy in force then denied (``decided_by``).
POLICY = "policy"

# What a request keeps of the call's arguments: enough for a human to tell two calls apart.
PREVIEW_STRING = 2000  # characters of one string value
PREVIEW_ITEMS = 50  # items of one list, keys of one object
PREVIEW_DEPTH = 8  # nesting levels
PREVIEW_BUDGET = 16384  # characters of strings, keys and long integers, over the whole preview
#: What each value costs of the budget besides its characters: containers and numbers cost
#: nothing, and a 4 MB body of nested empty lists was copied whole, 90 MB a request kept.
PREVIEW_NODE = 8
#: The call's own arguments (the top level) are each named, past the budget too: this many
#: at most, each name cut to PREVIEW_TOP_NAME characters once the budget is spent.
PREVIEW_TOP_KEYS = 200
PREVIEW_TOP_NAME = 100
#: An integer of more bits than this (about 1,000 digits, the most a request may carry) is
#: not shown: it is not converted to text (time that grows with the square of its length).
PREVIEW_INT_BITS = 3400
CUT = "[celgate: cut]"  # every truncation marker starts with this


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    match: str
    grant: str
    agent: str
    server: str
    tool: str
    args_digest: str
    args: Any
    args_truncated: bool
    revision: str
    rule: str
    reason: str
    mode: str
    created: float
    expires: float
    status: Status = "pending"
    decided_by: str | None = None
    note: str | None = None
    decided_at: float | None = None

    @property
    def owner(self) -> str:
        """Whose place in the queue it takes: the grant and, within it, the agent (one user of
        an OAuth client cannot fill the queue its other users share), as ``Identity.owner``."""
        return f"{len(self.grant)}:{self.grant}{self.agent}"

    def live_status(self, now: float) -> Status:
        if self.status in ("pending", "approved") and now >= self.expires:
            return "expired"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        """As it is shown (the admin API, the console, the CLI): without ``match``, a digest
        of the real arguments that, beside every other value of the call, would give a short
        secret argument (a PIN) to whoever hashes guesses."""
        shown = asdict(self)
        del shown["match"]
        return shown


class ApprovalStore(Protocol):
    async def create(self, request: ApprovalRequest, caps: ApprovalsConfig) -> Admission:
        """Queue ``request`` unless a cap is reached (then nothing is stored)."""
        ...

    async def get(self, approval_id: str) -> ApprovalRequest | None: ...

    async def still_pending(self, approval_id: str) -> bool:
        """Whether it is pending, cheaply; False when not known so (then ``get`` it)."""
        ...

    async def find(self, match: str) -> ApprovalRequest | None: ...

    async def transition(
        self, approval_id: str, before: Status, after: Status, by: str | None, note: str | None
    ) -> ApprovalRequest: ...

    async def forget_match(self, match: str, approval_id: str) -> None:
        """The match key forgotten if it still names ``approval_id``."""

    async def list(self) -> list[ApprovalRequest]: ...

    async def mark_waiting(self, approval_id: str, token: str, until: float) -> None:
        """A held call (``token``) waits on the request until ``until`` at least (marked
        again before then while it waits)."""

    async def unmark_waiting(self, approval_id: str, token: str) -> None: ...

    async def waiting(self, approval_id: str, now: float) -> int:
        """How many held calls, of every replica, wait on the request now."""
        ...

    async def close(self) -> None: ...


def match_key(call: Call, revision: str) -> str:
    """Which calls one approval covers: the same grant and agent (the users of one OAuth
    client share a grant; an operator approves what one of them asked), server, tool,
    arguments and policy revision."""
    identity = call.identity
    parts = "\x00".join(
        [identity.owner, call.server or "", call.tool, args_digest(call.args), revision]
    )
    return hashlib.sha256(parts.encode()).hexdigest()


#: A held call reads its whole request once in this many polls even while its status key
#: says pending (every 5 s at the default 0.25 s).
REREAD_POLLS = 20
#: A waiting call's mark lasts this long unless marked again (a replica that stopped
#: leaves marks that end by themselves).
WAITER_SECONDS = 30.0


class ApprovalService:
    """Creates, waits on and consumes approvals; the edge calls ``resolve``."""

    def __init__(
        self,
        store: ApprovalStore,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str], None] | None = None,
        poll_seconds: float = POLL_SECONDS,
        caps: ApprovalsConfig | None = None,
    ) -> None:
        self.store = store
        self.caps = caps or ApprovalsConfig()
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.on_event = on_event or (lambda _event: None)

    async def resolve(
        self,
        call: Call,
        decision: Decision,
        decision_id: str,
        tick: Tick | None = None,
        waits_on: Callable[[str], None] | None = None,
    ) -> Decision:
        """The decision after approval: allowed once approved, else a clear denial.
        ``waits_on`` is told the request's id when the call is to wait for it."""
        settings = decision.approval or Approval()
        match = match_key(call, decision.revision)
        request = await self._current(match)
        for _ in range(CREATE_TRIES):
            if request is not None:
                break
            request, admission = await self._create(call, decision, match, settings)
            if admission == "exists":  # made meanwhile for an identical call: use that one
                request = await self._current(match)
            elif request is None:
                return _queue_full(decision, call, admission, self.caps)
        if request is None:  # identical calls kept racing on a request going stale
            raise ApprovalError("no approval request could be made for this call")
        if request.status == "approved":
            return await self._consume(request, decision)
        if request.status in ("denied", "used"):
            return _refused(decision, request)
        if settings.mode == "retry":
            return _pending(decision, request)
        if waits_on is not None:
            waits_on(request.id)
        return await self._wait(request, decision, tick)

    async def _current(self, match: str) -> ApprovalRequest | None:
        request = await self.store.find(match)
        if request is None:
            return None
        now = self.clock()
        status = request.live_status(now)
        if status == "used" and now - (request.decided_at or 0.0) < SETTLING_SECONDS:
            return replace(request, status=status)  # just used: maybe given back (``release``)
        if status in ("used", "expired"):
            await self.store.forget_match(match, request.id)
            return None
        return replace(request, status=status)

    async def _create(
        self, call: Call, decision: Decision, match: str, settings: Approval
    ) -> tuple[ApprovalRequest | None, Admission]:
        now = self.clock()
        masked = mask_args(call.args, decision.secret_args)
        args, truncated = preview_args(masked)
        request = ApprovalRequest(
            id="apr_" + secrets.token_urlsafe(9),
            match=match,
            grant=call.identity.grant,
            agent=call.identity.agent,
            server=call.server or "",
            tool=call.tool,
            # shown beside the other values: of the masked arguments (the match binds the
            # real ones), or a short secret would be found by hashing guesses
            args_digest=args_digest(masked),
            args=args,
            args_truncated=truncated,
            revision=decision.revision,
            rule=decision.rule,
            reason=decision.reason,
            mode=settings.mode,
            created=now,
            expires=now + settings.timeout,
        )
        admission = await self.store.create(request, self.caps)
        if admission == "exists":
            return None, admission
        if admission != "ok":
            self.on_event("queue_full")
            return None, admission
        self.on_event("requested")
        return request, admission

    async def _consume(self, request: ApprovalRequest, decision: Decision) -> Decision:
        try:
            used = await self.store.transition(request.id, "approved", "used", None, None)
        except ApprovalError:
            # Another replica used it first: single use means this call needs a new approval.
            return _refused(decision, replace(request, status="used"))
        self.on_event("used")
        reason = f"approved by {used.decided_by or 'an operator'} ({used.id})"
        return replace(decision, effect="allow", reason=reason, approval_id=used.id)

    async def overrule(self, approval_id: str, reason: str) -> None:
        """An approval used by a call the policy in force then refused (decided again once
        approved: a reload, a tool changed against its pin): denied, by ``policy``, with the
        reason. The desk showed it ``used``, which an operator reads as "it ran". A store
        that cannot be reached leaves it used (logged)."""
        try:
            await self.store.transition(approval_id, "used", "denied", POLICY, reason[:500])
        except (ApprovalError, BackendUnavailable) as exc:
            log.warning("approvals.not_overruled", id=approval_id, error=type(exc).__name__)
            return
        self.on_event("overruled")

    async def release(self, approval_id: str) -> None:
        """Make an approval that was used by a call that then did not run (a limit refused
        it) usable again, once. A store that cannot be reached leaves it used (logged)."""
        try:
            await self.store.transition(approval_id, "used", "approved", None, None)
        except (ApprovalError, BackendUnavailable) as exc:
            log.warning("approvals.not_released", id=approval_id, error=type(exc).__name__)
            return
        self.on_event("released")

    async def _wait(
        self, request: ApprovalRequest, decision: Decision, tick: Tick | None
    ) -> Decision:
        """Marked as waiting on the request meanwhile, in the store: a cancel of an identical
        call elsewhere (another session, another replica) withdraws it only when no call
        waits on it any more (one replica's cancel refused another's wait: red-team wave
        65)."""
        token = secrets.token_hex(8)
        with contextlib.suppress(BackendUnavailable):
            await self.store.mark_waiting(request.id, token, self.clock() + WAITER_SECONDS)
        try:
            return await self._waited(request, decision, tick, token)
        finally:
            with contextlib.suppress(BackendUnavailable):
                await self.store.unmark_waiting(request.id, token)

    async def _waited(
        self, request: ApprovalRequest, decision: Decision, tick: Tick | None, token: str
    ) -> Decision:
        started = marked = self.clock()
        polls = 0
        while True:
            if self.clock() - marked > WAITER_SECONDS / 3:  # still waiting: marked again
                marked = self.clock()
                with contextlib.suppress(BackendUnavailable):
                    await self.store.mark_waiting(request.id, token, marked + WAITER_SECONDS)
            now = self.clock()
            polls += 1
            # The whole request every REREAD_POLLS polls all the same: a replica of a version
            # before the status key decides without writing it (a rolling upgrade).
            if (
                polls % REREAD_POLLS
                and await self.store.still_pending(request.id)
                and request.live_status(now) == "pending"
            ):
                if tick is not None:  # (nothing of it changed: it is read whole only then)
                    await tick(now - started)
                await anyio.sleep(self.poll_seconds)
                continue
            current = await self.store.get(request.id)
            now = self.clock()
            status = current.live_status(now) if current is not None else "expired"
            if current is not None and status == "approved":
                return await self._consume(current, decision)
            if current is None or status != "pending":
                if status == "expired":
                    self.on_event("expired")
                return _refused(decision, current or replace(request, status="expired"))
            if tick is not None:
                await tick(now - started)
            await anyio.sleep(self.poll_seconds)

    async def decide(
        self, approval_id: str, approve: bool, by: str, note: str | None
    ) -> ApprovalRequest:
        after: Status = "approved" if approve else "denied"
        request = await self.store.transition(approval_id, "pending", after, by, note)
        self.on_event(after)
        return request

    async def list(self) -> list[ApprovalRequest]:
        now = self.clock()
        items = await self.store.list()
        return [replace(r, status=r.live_status(now)) for r in items]


def _pending(decision: Decision, request: ApprovalRequest) -> Decision:
    reason = (
        f"pending approval {request.id}: {decision.reason}. An operator must approve it; "
        "then make the identical call again"
    )
    return replace(decision, reason=reason, approval_id=request.id, error="approval_pending")


def _queue_full(
    decision: Decision, call: Call, admission: Admission, caps: ApprovalsConfig
) -> Decision:
    if admission == "grant_full":
        who = call.identity
        whose = f"agent {who.agent} of grant {who.grant} already has {caps.max_pending_per_grant}"
    else:
        whose = f"the gateway already has {caps.max_pending}"
    reason = (
        f"not queued for approval: {whose} calls waiting for an operator. "
        "Try again once some are decided or expired"
    )
    return replace(decision, effect="deny", reason=reason, error="approval_queue_full")


def _refused(decision: Decision, request: ApprovalRequest) -> Decision:
    if request.status == "denied":
        who = request.decided_by or "an operator"
        note = f": {request.note}" if request.note else ""
        reason, code = f"approval {request.id} was refused by {who}{note}", "approval_refused"
    elif request.status == "used":
        reason, code = f"approval {request.id} was already used", "approval_used"
    else:
        reason, code = (
            f"approval {request.id} expired before anyone approved it",
            "approval_expired",
        )
    return replace(decision, effect="deny", reason=reason, approval_id=request.id, error=code)


def preview_args(args: Any) -> tuple[Any, bool]:
    """A bounded copy of a call's arguments for the approver, and whether anything was cut.

    Long strings, long lists, wide objects and deep nesting are cut, each cut marked with
    text starting with ``[celgate: cut]`` that says how much is missing; a shared budget
    bounds the whole copy, so what is stored per request stays small."""
    state = _Preview(PREVIEW_BUDGET)
    return state.value(args, 0), state.truncated


def _short(value: Any) -> bool:
    """A value shown past the preview's budget: a string of ``PREVIEW_TOP_NAME`` characters
    at most, a small number, a boolean or null."""
    if isinstance(value, str):
        return len(value) <= PREVIEW_TOP_NAME
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() <= 64
    return value is None or isinstance(value, bool | float)


class _Preview:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.truncated = False

    def cut(self, what: str) -> str:
        self.truncated = True
        return f"{CUT} {what}"

    def value(self, value: Any, depth: int) -> Any:
        self.budget -= PREVIEW_NODE
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.integer(value)
        if isinstance(value, bool | float) or value is None:
            return value
        if depth >= PREVIEW_DEPTH:
            return self.cut("nested deeper than this is not shown")
        if isinstance(value, dict):
            return self.mapping(value, depth)
        if isinstance(value, list | tuple):
            return self.sequence(list(value), depth)
        return self.string(repr(value))

    def integer(self, value: int) -> int | str:
        """An integer, its digits spent from the budget: one cost a node whatever its length,
        and 6 requests of 4,299-digit integers made 50 MB of previews, one listing of them
        13 s on the loop (red-team wave 41). One past the budget left is cut whole (a part of
        a number reads as another number)."""
        bits = value.bit_length()
        if bits <= 64:  # 20 digits at most: what a node costs covers it
            return value
        digits = len(str(value)) if bits <= PREVIEW_INT_BITS else None
        if digits is None or digits > self.budget:
            about = digits or int(bits * 0.30103) + 1
            return self.cut(f"an integer of {about} digits not shown")
        self.budget -= digits
        return value

    def string(self, text: str) -> str:
        keep = max(0, min(len(text), PREVIEW_STRING, self.budget))
        self.budget -= keep
        if keep == len(text):
            return text
        return text[:keep] + self.cut(f"{len(text) - keep} more characters not shown")

    def mapping(self, value: dict[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        items = list(value.items())
        shown = 0
        top = depth == 0  # the call's own arguments: each named, its value shown or cut
        for key, item in items[: PREVIEW_TOP_KEYS if top else PREVIEW_ITEMS]:
            if self.budget <= 0 and not top:
                break
            # the name before the value, which may spend the budget
            name = self.string(str(key)) if not top or self.budget > 0 else self.top_name(key)
            if name in out or name == CUT:  # two keys cut to one name (or one named as the
                # marker of keys not shown): neither hides the other
                name = self._unique(name, out)
            if self.budget > 0:
                out[name] = self.value(item, depth + 1)
            else:  # past the budget: named all the same, a short value shown (an agent
                # orders its arguments: long harmless ones first left "path": "/" out)
                out[name] = item if _short(item) else self.cut("value not shown")
            shown += 1
        if shown < len(items):
            out[CUT] = self.cut(f"{len(items) - shown} more keys not shown")
        return out

    def top_name(self, key: Any) -> str:
        """An argument's name once the budget is spent: its first ``PREVIEW_TOP_NAME``
        characters."""
        name = str(key)
        if len(name) <= PREVIEW_TOP_NAME:
            return name
        return name[:PREVIEW_TOP_NAME] + self.cut(f"{len(name) - PREVIEW_TOP_NAME} more characters")

    def _unique(self, name: str, taken: dict[str, Any]) -> str:
        """``name`` marked as the gateway's renaming (``#2``, ``#3``...) until no key has it."""
        self.truncated = True
        n = 2
        while f"{name} {CUT} #{n}" in taken:
            n += 1
        return f"{name} {CUT} #{n}"

    def sequence(self, value: list[Any], depth: int) -> list[Any]:
        out: list[Any] = []
        for item in value[:PREVIEW_ITEMS]:
            if self.budget <= 0:
                break
            out.append(self.value(item, depth + 1))
        if len(out) < len(value):
            out.append(self.cut(f"{len(value) - len(out)} more items not shown"))
        return out
