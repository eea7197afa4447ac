"""Where approval requests live: process memory, or Valkey shared by every replica.

State changes (pending -> approved/denied, approved -> used) are compare-and-set: in Valkey one
Lua script reads, checks and writes, so two replicas can never both use one approval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import valkey.asyncio as avalkey
from valkey.exceptions import ValkeyError

from gateway.approvals import KEEP_SECONDS, ApprovalRequest, Status
from gateway.errors import ApprovalError, BackendUnavailable
from gateway.ratelimit.factory import valkey_url
from gateway.ratelimit.lane import client_defaults

_TRANSITION = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing', ''} end
local req = cjson.decode(raw)
local now = tonumber(ARGV[3])
local status = req.status
if (status == 'pending' or status == 'approved') and now >= tonumber(req.expires) then
  status = 'expired'
end
if status ~= ARGV[1] then return {'conflict', status} end
req.status = ARGV[2]
req.decided_at = now
if ARGV[4] ~= '' then req.decided_by = ARGV[4] end
if ARGV[5] ~= '' then req.note = ARGV[5] end
local out = cjson.encode(req)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
return {'ok', out}
"""


def _conflict(approval_id: str, before: Status, actual: str) -> ApprovalError:
    if actual == "missing":
        return ApprovalError(f"approval {approval_id} not found")
    return ApprovalError(f"approval {approval_id} is {actual}, not {before}")


class MemoryApprovalStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: dict[str, ApprovalRequest] = {}
        self.matches: dict[str, str] = {}

    async def create(self, request: ApprovalRequest) -> None:
        self._sweep()
        self.requests[request.id] = request
        self.matches[request.match] = request.id

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        return self.requests.get(approval_id)

    async def find(self, match: str) -> ApprovalRequest | None:
        approval_id = self.matches.get(match)
        return self.requests.get(approval_id) if approval_id else None

    async def transition(
        self, approval_id: str, before: Status, after: Status, by: str | None, note: str | None
    ) -> ApprovalRequest:
        request = self.requests.get(approval_id)
        now = self.clock()
        if request is None:
            raise _conflict(approval_id, before, "missing")
        actual = request.live_status(now)
        if actual != before:
            raise _conflict(approval_id, before, actual)
        changed = replace(
            request,
            status=after,
            decided_at=now,
            decided_by=by or request.decided_by,
            note=note or request.note,
        )
        self.requests[approval_id] = changed
        return changed

    async def forget_match(self, match: str) -> None:
        self.matches.pop(match, None)

    async def list(self) -> list[ApprovalRequest]:
        self._sweep()
        return sorted(self.requests.values(), key=lambda r: r.created, reverse=True)

    async def close(self) -> None:
        return None

    def _sweep(self) -> None:
        horizon = self.clock() - KEEP_SECONDS
        for approval_id, request in list(self.requests.items()):
            if request.expires < horizon:
                del self.requests[approval_id]
                if self.matches.get(request.match) == approval_id:
                    del self.matches[request.match]


class ValkeyApprovalStore:
    def __init__(
        self,
        url: str,
        prefix: str = "celgate:ap:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.5,
    ) -> None:
        self.client = avalkey.Valkey.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            max_connections=32,
            **client_defaults(url),  # TLS checked as by the limiter
        )
        self.prefix = prefix
        self.clock = clock
        self.script = self.client.register_script(_TRANSITION)

    def _req(self, approval_id: str) -> str:
        return f"{self.prefix}req:{approval_id}"

    def _match(self, match: str) -> str:
        return f"{self.prefix}match:{match}"

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (ValkeyError, OSError) as exc:
            raise BackendUnavailable("approval backend unavailable") from exc

    async def create(self, request: ApprovalRequest) -> None:
        ttl = max(1, int(request.expires - self.clock() + KEEP_SECONDS))
        match_ttl = max(1, int(request.expires - self.clock()) + 1)
        raw = json.dumps(asdict(request))
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._req(request.id), raw, ex=ttl)
        pipe.set(self._match(request.match), request.id, ex=match_ttl)
        pipe.zadd(f"{self.prefix}index", {request.id: request.created})
        pipe.zremrangebyscore(f"{self.prefix}index", "-inf", self.clock() - KEEP_SECONDS)
        await self._do(pipe.execute())

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        raw = await self._do(self.client.get(self._req(approval_id)))
        return _decode(raw)

    async def find(self, match: str) -> ApprovalRequest | None:
        approval_id = await self._do(self.client.get(self._match(match)))
        if approval_id is None:
            return None
        return await self.get(approval_id.decode())

    async def transition(
        self, approval_id: str, before: Status, after: Status, by: str | None, note: str | None
    ) -> ApprovalRequest:
        args = [before, after, repr(self.clock()), by or "", note or ""]
        outcome, payload = await self._do(self.script(keys=[self._req(approval_id)], args=args))
        if outcome != b"ok":
            raise _conflict(approval_id, before, payload.decode() or "missing")
        request = _decode(payload)
        assert request is not None
        return request

    async def forget_match(self, match: str) -> None:
        await self._do(self.client.delete(self._match(match)))

    async def list(self) -> list[ApprovalRequest]:
        ids = await self._do(self.client.zrevrange(f"{self.prefix}index", 0, 199))
        if not ids:
            return []
        raws = await self._do(self.client.mget([self._req(i.decode()) for i in ids]))
        return [r for r in (_decode(raw) for raw in raws) if r is not None]

    async def close(self) -> None:
        await self.client.aclose()


def _decode(raw: bytes | None) -> ApprovalRequest | None:
    if raw is None:
        return None
    data = json.loads(raw)
    fields = ApprovalRequest.__dataclass_fields__
    return ApprovalRequest(**{k: v for k, v in data.items() if k in fields})


def make_store(
    backend: str,
    clock: Callable[[], float] = time.time,
    *,
    key_prefix: str = "celgate:",
    timeout_ms: int = 500,
) -> Any:
    """Approvals live where the limits do: memory, or the Valkey that ``limits.backend``
    names (a bad URL is an error, never a quiet fall back to per-process memory)."""
    valkey = valkey_url(backend, "approval store")
    if valkey is None:
        return MemoryApprovalStore(clock)
    return ValkeyApprovalStore(
        valkey, prefix=key_prefix + "ap:", clock=clock, timeout=timeout_ms / 1000
    )
