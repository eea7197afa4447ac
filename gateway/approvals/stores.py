"""Where approval requests live: process memory, or Valkey shared by every replica.

State changes (pending -> approved/denied, approved -> used) are compare-and-set: in Valkey one
Lua script reads, checks and writes, so two replicas can never both use one approval. Queueing
is one script too: it drops what has expired from the pending sets (per grant, and in all),
counts them against the caps and only then stores the request, so replicas share one cap.

Memory stays bounded: a pending request lives until it expires (plus a short grace, to be
listed as expired) and is then evicted; decided ones are kept a day for the listing, at most
``KEEP_DECIDED`` of them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import structlog
from valkey.asyncio import Valkey

from gateway.approvals.service import (
    APPROVED_USE_SECONDS,
    CLIENT,
    GRACE_SECONDS,
    KEEP_DECIDED,
    KEEP_SECONDS,
    Admission,
    ApprovalRequest,
    Status,
)
from gateway.auth.guard import same_text
from gateway.config.sections import ApprovalsConfig
from gateway.errors import ApprovalError, ApprovalNotFound, BackendUnavailable
from gateway.ratelimit.client import BACKEND_ERRORS, Outage, valkey_client
from gateway.ratelimit.factory import valkey_url

#: What a request its client withdrew keeps of its arguments in memory (an agent cancelling
#: held calls in a loop kept every one's preview, past the per-agent pending cap).
WITHDRAWN_ARGS = {"omitted": "withdrawn by its client"}
_WITHDRAWN_ARGS_JSON = json.dumps(WITHDRAWN_ARGS)

# A call with a request already (its match key is there) gets 'exists', never a second one.
# KEYS: request, match, index, pending of the owner (grant and agent), pending of all, the
# request's status (its own small key: a held call polls it, not the whole request)
# ARGV: request JSON, id, created, expires, now, per-owner cap, total cap, request TTL,
#       match TTL, index size (the index of recent requests keeps the newest so many)
# Declared (the first line), so that Valkey over its maxmemory refuses it before it runs: an
# undeclared script that began with a command freeing memory had its later writes let
# through, and 19 requests of 750 KB went past a 1.5 MiB cap (red-team wave 44).
_CREATE = """#!lua
local now = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then return 'exists' end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[6]) then return 'grant_full' end
if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[7]) then return 'total_full' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[8])
redis.call('SET', KEYS[6], 'pending', 'EX', ARGV[8])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[10]) - 1)
for i = 4, 5 do
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[2])
  if redis.call('TTL', KEYS[i]) < tonumber(ARGV[9]) then redis.call('EXPIRE', KEYS[i], ARGV[9]) end
end
return 'ok'
"""

# In-band approval states carry the store's epoch: a random value kept in Valkey with no
# expiry. Valkey restarted without persistence has none; the first to ask makes a new one, so
# the states issued before (and their single-use marks, lost too) can never be used again.
# KEYS: epoch; ARGV: a fresh epoch, set if there is none
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[1]); epoch = ARGV[1] end
return epoch
"""
# KEYS: epoch, the token's single-use mark, the marks its owner holds (a sorted set of
# tokens by expiry); ARGV: the state's epoch, a fresh epoch, TTL, now, the owner's share.
# A replay is 0, an owner at its share 2 (refused, never a live mark forgotten). Declared,
# as _CREATE is, so that a store over its maxmemory refuses it up front.
_ONCE = """#!lua
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[2]); epoch = ARGV[2] end
if epoch ~= ARGV[1] then return {0, epoch} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, epoch} end
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return {2, epoch} end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), KEYS[2])
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[3], math.max(1, math.ceil(tonumber(last[2]) - now)))
return {1, epoch}
"""

# KEYS: a match key; ARGV: the request it is to stop naming. Another request's (made meanwhile
# for an identical call) stays: two callers forgetting a used one at once deleted each
# other's new requests' keys, and one call got two pending requests (red-team wave 54).
_FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: request, pending of its grant, pending of all, its match key, its status
# ARGV: before, after, now, decided_by, note, TTL from now on ('' keeps it), the seconds an
# approval stays usable at least (APPROVED_USE_SECONDS), the arguments' JSON to keep in place
# of the call's ('' keeps them: a request its client withdrew keeps none, as in memory; an
# agent cancelling held calls of 500 KB in a loop kept 170 MiB of them, red-team wave 61)
# An approval (given, or given back) keeps its match key as long as it is usable: an identical
# call finds it there (retry mode), and the key's first lifetime ended at the request's first
# expiry, so an approval given near the end was never found (a new request made instead).
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
local window = tonumber(req.expires) - tonumber(req.created)
local usable_until = now + math.min(tonumber(ARGV[7]), window)
if ARGV[1] == 'pending' and ARGV[2] == 'approved' and tonumber(req.expires) < usable_until then
  req.expires = usable_until
end
if ARGV[4] ~= '' then req.decided_by = ARGV[4] end
if ARGV[5] ~= '' then req.note = ARGV[5] end
if ARGV[8] ~= '' then
  req.args_json = ARGV[8]
  req.args_truncated = true
end
local out = cjson.encode(req)
if ARGV[6] == '' then
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], out, 'EX', ARGV[6])
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('SET', KEYS[5], ARGV[2], 'PX', left) end
if ARGV[1] == 'pending' then
  redis.call('ZREM', KEYS[2], req.id)
  redis.call('ZREM', KEYS[3], req.id)
end
if ARGV[2] == 'approved' and redis.call('GET', KEYS[4]) == req.id then
  redis.call('EXPIRE', KEYS[4], math.max(1, math.ceil(tonumber(req.expires) - now) + 1))
end
return {'ok', out}
"""


def _conflict(approval_id: str, before: Status, actual: str) -> ApprovalError:
    if actual == "missing":
        return ApprovalNotFound(f"approval {approval_id} not found")
    return ApprovalError(f"approval {approval_id} is {actual}, not {before}")


log = structlog.get_logger("celgate.approvals")

#: Single-use marks of in-band approvals held at once (about 200 bytes each). Each is an answer
#: a human gave, kept until its state expires; past this many a new answer is refused rather
#: than an unexpired mark forgotten (which would let that answer be replayed).
MAX_ONCE_MARKS = 250_000
#: ... and by one owner (a grant's agent): one agent answering its own questions fills its
#: share, not everyone's.
MAX_ONCE_MARKS_EACH = 5_000


class MemoryApprovalStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.requests: dict[str, ApprovalRequest] = {}
        self.matches: dict[str, str] = {}
        #: Held calls waiting on each request, each until when (``mark_waiting``).
        self.waiters: dict[str, dict[str, float]] = {}
        self.pending: dict[str, ApprovalRequest] = {}  # by id; a subset of ``requests``
        self.swept = float("-inf")
        self.used: dict[str, float] = {}  # single-use tokens, until they expire
        self._expiry: list[tuple[float, str, str]] = []  # (until, token, owner), soonest first
        self._owned: dict[str, int] = {}  # marks held per owner
        self.epoch = _fresh_epoch()  # this process's: a later one's store refuses its states

    async def create(self, request: ApprovalRequest, caps: ApprovalsConfig) -> Admission:
        self._sweep()
        if request.match in self.matches:
            return "exists"
        now = self.clock()
        live = [r for r in self.pending.values() if r.expires > now]
        if sum(1 for r in live if r.owner == request.owner) >= caps.max_pending_per_grant:
            return "grant_full"
        if len(live) >= caps.max_pending:
            return "total_full"
        self.requests[request.id] = request
        self.pending[request.id] = request
        self.matches[request.match] = request.id
        return "ok"

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        return self.requests.get(approval_id)

    async def still_pending(self, approval_id: str) -> bool:
        found = self.requests.get(approval_id)
        return found is not None and found.status == "pending"

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
        expires = request.expires
        if before == "pending" and after == "approved":
            expires = max(expires, now + min(APPROVED_USE_SECONDS, expires - request.created))
        changed = replace(
            request,
            status=after,
            decided_at=now,
            decided_by=by or request.decided_by,
            note=note or request.note,
            expires=expires,
        )
        if after == "denied" and by == CLIENT:  # withdrawn: no one will read its arguments
            changed = replace(changed, args=WITHDRAWN_ARGS, args_truncated=True)
        self.requests[approval_id] = changed
        self.pending.pop(approval_id, None)
        return changed

    async def forget_match(self, match: str, approval_id: str) -> None:
        if self.matches.get(match) == approval_id:
            del self.matches[match]

    async def mark_waiting(self, approval_id: str, token: str, until: float) -> None:
        self.waiters.setdefault(approval_id, {})[token] = until

    async def unmark_waiting(self, approval_id: str, token: str) -> None:
        marks = self.waiters.get(approval_id)
        if marks is not None:
            marks.pop(token, None)
            if not marks:
                del self.waiters[approval_id]

    async def waiting(self, approval_id: str, now: float) -> int:
        return sum(1 for until in self.waiters.get(approval_id, {}).values() if until > now)

    async def current_epoch(self, fresh: bool = False) -> str:
        return self.epoch

    async def consume_once(self, token: str, ttl: float, epoch: str, owner: str = "") -> bool:
        """True the first time ``token`` (an in-band approval's nonce) is used, within ``ttl``
        seconds, under this store's epoch (a state a former process issued is not, whatever
        the signing key); False on any replay (``gateway.edge.inband``), and past the marks
        an ``owner`` (a grant's agent) may hold, or all may."""
        if not same_text(epoch, self.epoch):
            return False
        now = self.clock()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:  # the marks that expired, soonest first
            until, old, whose = heapq.heappop(expiry)
            if self.used.get(old) == until:
                del self.used[old]
                self._owned[whose] -= 1
                if not self._owned[whose]:
                    del self._owned[whose]
        if token in self.used:
            return False
        # Refused, never an unexpired mark forgotten (its answer could be used again); one
        # agent at its share refuses only its own answers.
        owned = self._owned.get(owner, 0)
        if owned >= MAX_ONCE_MARKS_EACH or len(self.used) >= MAX_ONCE_MARKS:
            log.warning("approvals.once_full", owner=owner, owned=owned, marks=len(self.used))
            return False
        self.used[token] = until = now + ttl
        self._owned[owner] = owned + 1
        heapq.heappush(expiry, (until, token, owner))
        return True

    async def list(self) -> list[ApprovalRequest]:
        self._sweep()
        return sorted(self.requests.values(), key=lambda r: r.created, reverse=True)

    async def close(self) -> None:
        return None

    def _sweep(self) -> None:
        """Evict undecided requests past their grace, and decided ones past a day (or past
        the newest ``KEEP_DECIDED``); at most once a second, as a flood of held calls comes
        here every time."""
        now = self.clock()
        if now - self.swept < 1.0:
            return
        self.swept = now
        for request in list(self.pending.values()):
            if _evict_at(request) <= now:
                self._drop(request)
        decided = [r for r in self.requests.values() if r.id not in self.pending]
        # Past the newest KEEP_DECIDED, the first to go are those their own client withdrew
        # (an agent can make as many as it likes); an approval not used yet is never let go
        # before it expires: an agent's flood of cancelled calls must not undo an operator.
        decided.sort(key=lambda r: (r.decided_by != CLIENT, r.decided_at or r.created))
        decided.reverse()
        for rank, request in enumerate(decided):
            usable = request.status == "approved" and request.expires > now
            kept = GRACE_SECONDS if request.decided_by == CLIENT else KEEP_SECONDS  # as Valkey
            old = (request.decided_at or 0) + kept <= now
            if old or (rank >= KEEP_DECIDED and not usable):
                self._drop(request)

    def _drop(self, request: ApprovalRequest) -> None:
        del self.requests[request.id]
        self.pending.pop(request.id, None)
        if self.matches.get(request.match) == request.id:
            del self.matches[request.match]


class ValkeyApprovalStore:
    """Approvals in Valkey; ``backend`` is a URL (a pool of its own) or the process's shared
    client (:func:`gateway.ratelimit.factory.shared_client`)."""

    def __init__(
        self,
        backend: str | Valkey,
        prefix: str = "celgate:ap:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.5,
    ) -> None:
        if isinstance(backend, str):
            backend = valkey_client(backend, timeout=timeout, max_connections=32)
        self.client = backend
        self.prefix = prefix
        self.clock = clock
        self.outage = Outage(component="approvals")  # logged as it starts and ends, not per call
        self.script = self.client.register_script(_TRANSITION)
        self.epoch_script = self.client.register_script(_EPOCH)
        self.once_script = self.client.register_script(_ONCE)
        self._epoch = f"{prefix}epoch"
        self.epoch = ""  # as last seen; asked for on first use
        self.epoch_read_at = 0.0  # when (``clock``)
        self.queue = self.client.register_script(_CREATE)
        self.forget_script = self.client.register_script(_FORGET)

    def _req(self, approval_id: str) -> str:
        return f"{self.prefix}req:{approval_id}"

    def _status(self, approval_id: str) -> str:
        return f"{self.prefix}status:{approval_id}"

    def _match(self, match: str) -> str:
        return f"{self.prefix}match:{match}"

    def _pending(self, owner: str | None = None) -> str:
        """The pending set of all, or of one owner (grant and agent)."""
        return f"{self.prefix}pending" + ("" if owner is None else f":of:{owner}")

    async def _do(self, coro: Any) -> Any:
        try:
            answer = await coro
        except BACKEND_ERRORS as exc:
            self.outage.failed(exc)
            raise BackendUnavailable("approval backend unavailable") from exc
        if self.outage.since is not None:
            self.outage.recovered()
        return answer

    async def create(self, request: ApprovalRequest, caps: ApprovalsConfig) -> Admission:
        now = self.clock()
        keys = [
            self._req(request.id),
            self._match(request.match),
            f"{self.prefix}index",
            self._pending(request.owner),
            self._pending(),
            self._status(request.id),
        ]
        args: list[str | int] = [
            _encode(request),
            request.id,
            repr(request.created),
            repr(request.expires),
            repr(now),
            caps.max_pending_per_grant,
            caps.max_pending,
            max(1, int(_evict_at(request) - now) + 1),
            max(1, int(request.expires - now) + 1),
            KEEP_DECIDED,
        ]
        outcome = await self._do(self.queue(keys=keys, args=args))
        admission: Admission = outcome.decode()
        return admission

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        raw = await self._do(self.client.get(self._req(approval_id)))
        return _decode(raw)

    async def still_pending(self, approval_id: str) -> bool:
        """Whether the request was pending when last decided on, read from its small status
        key: a held call polls this, not the request (re-reading a large one every 0.25 s for
        each of 40 held calls slowed every other call tenfold, red-team wave 44). False when
        it is not known so (then the whole request is read)."""
        status = await self._do(self.client.get(self._status(approval_id)))
        return bool(status == b"pending")

    async def find(self, match: str) -> ApprovalRequest | None:
        approval_id = await self._do(self.client.get(self._match(match)))
        if approval_id is None:
            return None
        return await self.get(approval_id.decode())

    async def transition(
        self, approval_id: str, before: Status, after: Status, by: str | None, note: str | None
    ) -> ApprovalRequest:
        owner = match = ""
        if before == "pending" or after == "approved":  # its owner's pending set, its match
            current = await self.get(approval_id)
            owner = current.owner if current is not None else ""
            match = current.match if current is not None else ""
        keep = str(int(KEEP_SECONDS)) if before == "pending" else ""
        kept_args = ""
        if after == "denied" and by == CLIENT:
            # withdrawn by its client: nobody decides it, and one agent cancelling held calls
            # in a loop kept a day of them (with their arguments) in Valkey
            keep = str(int(GRACE_SECONDS))
            kept_args = _WITHDRAWN_ARGS_JSON
        now = repr(self.clock())
        args = [before, after, now, by or "", note or "", keep, repr(APPROVED_USE_SECONDS)]
        args.append(kept_args)
        keys = [self._req(approval_id), self._pending(owner), self._pending(), self._match(match)]
        keys.append(self._status(approval_id))
        outcome, payload = await self._do(self.script(keys=keys, args=args))
        if outcome != b"ok":
            raise _conflict(approval_id, before, payload.decode() or "missing")
        request = _decode(payload)
        assert request is not None
        return request

    async def forget_match(self, match: str, approval_id: str) -> None:
        await self._do(self.forget_script(keys=[self._match(match)], args=[approval_id]))

    def _waiters(self, approval_id: str) -> str:
        """The held calls waiting on a request, of every replica: a sorted set of tokens,
        each scored with when its mark ends."""
        return f"{self.prefix}waiters:{approval_id}"

    async def mark_waiting(self, approval_id: str, token: str, until: float) -> None:
        key = self._waiters(approval_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {token: until})
        pipe.expire(key, int(KEEP_SECONDS))
        await self._do(pipe.execute())

    async def unmark_waiting(self, approval_id: str, token: str) -> None:
        await self._do(self.client.zrem(self._waiters(approval_id), token))

    async def waiting(self, approval_id: str, now: float) -> int:
        count = await self._do(self.client.zcount(self._waiters(approval_id), f"({now!r}", "+inf"))
        return int(count)

    async def current_epoch(self, fresh: bool = False) -> str:
        """The store's epoch (made on first use, and again after Valkey lost its data), read
        again once ``EPOCH_FRESH_SECONDS`` old, or now (``fresh``: a question asked, rare).
        Read once only, a replica that issued states but never checked one kept the epoch
        Valkey had lost: every state it issued was refused wherever answered, for good
        (red-team wave 67). A store that does not answer leaves the epoch last read (asked
        again ``EPOCH_FRESH_SECONDS`` later), or none."""
        now = self.clock()
        stale = not 0 <= now - self.epoch_read_at < EPOCH_FRESH_SECONDS
        if not self.epoch or stale or fresh:
            self.epoch_read_at = now
            try:
                found = await self._do(self.epoch_script(keys=[self._epoch], args=[_fresh_epoch()]))
            except BackendUnavailable:
                if not self.epoch:
                    raise
                return self.epoch
            self.epoch = found.decode()
        return self.epoch

    async def consume_once(self, token: str, ttl: float, epoch: str, owner: str = "") -> bool:
        """One mark shared by every replica, under the store's epoch: only the first use of
        ``token`` wins, a token issued before Valkey lost its data never does, and an
        ``owner`` (a grant's agent) holds at most ``MAX_ONCE_MARKS_EACH`` live marks (one
        agent answering its own questions fills its share, not Valkey)."""
        owned = f"{self.prefix}once-owner:{owner}"
        keys = [self._epoch, f"{self.prefix}once:{token}", owned]
        now = repr(self.clock())
        args: list[str | int] = [epoch, _fresh_epoch(), max(1, int(ttl) + 1), now]
        args.append(MAX_ONCE_MARKS_EACH)
        won, current = await self._do(self.once_script(keys=keys, args=args))
        self.epoch, self.epoch_read_at = current.decode(), self.clock()
        if won == 2:
            log.warning("approvals.once_full", owner=owner, owned=MAX_ONCE_MARKS_EACH)
        return bool(won == 1)

    async def list(self) -> list[ApprovalRequest]:
        """Every live pending request, and the newest 200 of the rest."""
        pending = self.client.zrangebyscore(self._pending(), repr(self.clock()), "+inf")
        ids = set(await self._do(pending))
        ids.update(await self._do(self.client.zrevrange(f"{self.prefix}index", 0, 199)))
        if not ids:
            return []
        raws = await self._do(self.client.mget([self._req(i.decode()) for i in ids]))
        # 1,000 held calls of 16 KiB arguments each: 0.18 s of decoding, which held every
        # caller on the event loop at each console's poll (red-team wave 50). Done beside it.
        return await asyncio.to_thread(_decoded_newest_first, raws)

    async def close(self) -> None:
        await self.client.aclose()


#: How long a replica issues in-band approval states under the epoch it last read.
EPOCH_FRESH_SECONDS = 1.0


def _fresh_epoch() -> str:
    return secrets.token_hex(8)


def _evict_at(request: ApprovalRequest) -> float:
    """When an undecided request is forgotten: a while after it expired, no longer than it
    could wait (so requests in their grace never outnumber the ones that count)."""
    return request.expires + min(GRACE_SECONDS, request.expires - request.created)


def _encode(request: ApprovalRequest) -> str:
    """The arguments travel as a JSON string inside the record: the scripts' cjson would turn
    an empty list into an object and round long numbers."""
    data = asdict(request)
    data["args_json"] = json.dumps(data.pop("args"))
    return json.dumps(data)


def _decoded_newest_first(raws: list[bytes | None]) -> list[ApprovalRequest]:
    found = [r for r in (_decode(raw) for raw in raws) if r is not None]
    return sorted(found, key=lambda r: r.created, reverse=True)


def _decode(raw: bytes | None) -> ApprovalRequest | None:
    if raw is None:
        return None
    data = json.loads(raw)
    data["args"] = json.loads(data.pop("args_json", "null"))
    data.setdefault("args_truncated", False)
    fields = ApprovalRequest.__dataclass_fields__
    return ApprovalRequest(**{k: v for k, v in data.items() if k in fields})


def make_store(
    backend: str,
    clock: Callable[[], float] = time.time,
    *,
    key_prefix: str = "celgate:",
    timeout_ms: int = 500,
    client: Valkey | None = None,
) -> Any:
    """Approvals live where the limits do: memory, or the Valkey that ``limits.backend``
    names (a bad URL is an error, never a quiet fall back to per-process memory), through
    ``client`` (the process's shared one) when given."""
    valkey = valkey_url(backend, "approval store")
    if valkey is None:
        return MemoryApprovalStore(clock)
    return ValkeyApprovalStore(
        client or valkey, prefix=key_prefix + "ap:", clock=clock, timeout=timeout_ms / 1000
    )
