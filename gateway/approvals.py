"""Human approval of held calls (filled in by the approvals work)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.edge.jsonrpc import Message
    from gateway.policy.model import Call, Decision


class Approvals(Protocol):
    async def resolve(
        self, call: Call, decision: Decision, decision_id: str, message: Message
    ) -> Decision: ...
