"""Human approval of held calls.

An approval request is bound to grant, server, tool, a digest of the arguments and the policy
revision, and it expires. It is single-use: once an approved call has gone through, the same
call needs a new approval; an approval never covers other arguments. State lives in the same
backend as limits (memory, or Valkey so that any replica can approve a call another holds).

Two ways for the agent's call, chosen per rule (``approval: {mode: wait|retry}``):
``wait`` holds the request open until decided or timed out; ``retry`` answers "pending
approval ID" at once, and the identical call made again after approval passes, once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import anyio

from gateway.audit import args_digest
from gateway.errors import ApprovalError
from gateway.policy.model import Approval, Call, Decision

Status = Literal["pending", "approved", "denied", "used", "expired"]
Tick = Callable[[float], Awaitable[None]]
POLL_SECONDS = 0.25
KEEP_SECONDS = 86400.0  # decided requests stay listable for a day


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    match: str
    grant: str
    agent: str
    server: str
    tool: str
    args_digest: str
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

    def live_status(self, now: float) -> Status:
        if self.status in ("pending", "approved") and now >= self.expires:
            return "expired"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ApprovalStore(Protocol):
    async def create(self, request: ApprovalRequest) -> None: ...

    async def get(self, approval_id: str) -> ApprovalRequest | None: ...

    async def find(self, match: str) -> ApprovalRequest | None: ...

    async def transition(
        self, approval_id: str, before: Status, after: Status, by: str | None, note: str | None
    ) -> ApprovalRequest: ...

    async def forget_match(self, match: str) -> None: ...

    async def list(self) -> list[ApprovalRequest]: ...

    async def close(self) -> None: ...


def match_key(call: Call, revision: str) -> str:
    parts = "\x00".join(
        [call.identity.grant, call.server or "", call.tool, args_digest(call.args), revision]
    )
    return hashlib.sha256(parts.encode()).hexdigest()


class ApprovalService:
    """Creates, waits on and consumes approvals; the edge calls ``resolve``."""

    def __init__(
        self,
        store: ApprovalStore,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str], None] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.on_event = on_event or (lambda _event: None)

    async def resolve(
        self, call: Call, decision: Decision, decision_id: str, tick: Tick | None = None
    ) -> Decision:
        """The decision after approval: allowed once approved, else a clear denial."""
        settings = decision.approval or Approval()
        match = match_key(call, decision.revision)
        request = await self._current(match)
        if request is not None and request.status == "approved":
            return await self._consume(request, decision)
        if request is not None and request.status == "denied":
            return _refused(decision, request)
        if request is None:
            request = await self._create(call, decision, match, settings)
        if settings.mode == "retry":
            return _pending(decision, request)
        return await self._wait(request, decision, tick)

    async def _current(self, match: str) -> ApprovalRequest | None:
        request = await self.store.find(match)
        if request is None:
            return None
        status = request.live_status(self.clock())
        if status in ("used", "expired"):
            await self.store.forget_match(match)
            return None
        return replace(request, status=status)

    async def _create(
        self, call: Call, decision: Decision, match: str, settings: Approval
    ) -> ApprovalRequest:
        now = self.clock()
        request = ApprovalRequest(
            id="apr_" + secrets.token_urlsafe(9),
            match=match,
            grant=call.identity.grant,
            agent=call.identity.agent,
            server=call.server or "",
            tool=call.tool,
            args_digest=args_digest(call.args),
            revision=decision.revision,
            rule=decision.rule,
            reason=decision.reason,
            mode=settings.mode,
            created=now,
            expires=now + settings.timeout,
        )
        await self.store.create(request)
        self.on_event("requested")
        return request

    async def _consume(self, request: ApprovalRequest, decision: Decision) -> Decision:
        try:
            used = await self.store.transition(request.id, "approved", "used", None, None)
        except ApprovalError:
            # Another replica used it first: single use means this call needs a new approval.
            return _refused(decision, replace(request, status="used"))
        self.on_event("used")
        reason = f"approved by {used.decided_by or 'an operator'} ({used.id})"
        return replace(decision, effect="allow", reason=reason, approval_id=used.id)

    async def _wait(
        self, request: ApprovalRequest, decision: Decision, tick: Tick | None
    ) -> Decision:
        started = self.clock()
        while True:
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
