"""What in-band approval (``approval: {mode: elicit}``) keeps and checks, apart from the wire.

Two kinds of token, both HMAC-SHA256 with the session secret (``gw.signer.key``), each with
its own domain label so one can never stand for the other or for a session id:

- the id of the gateway's own ``elicitation/create`` request (2025-11-25), bound to server,
  grant and agent (``Identity.owner``), session and a random nonce:
  ``celgate-<nonce>.<mac>``. Only the caller that was asked can answer it, and it cannot be
  guessed;
- the ``requestState`` of an ``input_required`` answer (2026-07-28), bound to grant, agent,
  server, tool, argument digest, policy revision and expiry: ``celgate.v1.<payload>.<mac>``. It is
  used once: its nonce is consumed in the approval store (memory, or Valkey for every replica).

``Waiters`` (2025-11-25 only) is where a held call waits for its answer: process memory. With
several replicas the answer's POST must reach the replica that holds the stream (route by
``Mcp-Session-Id``); anywhere else the id is unknown, the answer is refused and the held call
ends as ``approval_expired`` when its timeout passes. ``ClientCapabilities`` remembers, per
session, whether the client declared elicitation at ``initialize``; a session begun on another
replica is not known here, and its held calls use the rule's out-of-band ``fallback``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.auth.guard import same_text
from gateway.policy.model import Call
from gateway.telemetry.audit import args_digest
from gateway.wire.jsonrpc import RESERVED_ID_PREFIX

ID_PREFIX = RESERVED_ID_PREFIX
STATE_PREFIX = "celgate.v1."
StateProblem = Literal[
    "approval_state_invalid",
    "approval_state_mismatch",
    "approval_policy_changed",
    "approval_expired",
]


def _mac(key: bytes, label: str, *parts: str) -> str:
    msg = "\x00".join((label, *parts)).encode()
    return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()[:24]).decode()


# ----------------------------------------------------------------- 2025-11-25: request ids


def is_gateway_id(msg_id: Any) -> bool:
    """Whether an answer's id names a request the gateway sent (never forwarded upstream)."""
    return isinstance(msg_id, str) and msg_id.startswith(ID_PREFIX)


def mint_id(key: bytes, server: str, owner: str, session: str) -> tuple[str, str]:
    """A fresh request id and its nonce."""
    nonce = secrets.token_urlsafe(16)
    return f"{ID_PREFIX}{nonce}.{_mac(key, 'elicit-id', server, owner, session, nonce)}", nonce


def check_id(key: bytes, msg_id: str, server: str, owner: str, session: str) -> str | None:
    """The nonce of an id minted here for this server, owner and session; else None."""
    nonce, dot, mac = msg_id.removeprefix(ID_PREFIX).rpartition(".")
    if not dot or not nonce:
        return None
    expected = _mac(key, "elicit-id", server, owner, session, nonce)
    return nonce if same_text(mac, expected) else None


# ------------------------------------------------------------- 2026-07-28: requestState


@dataclass(frozen=True, slots=True)
class State:
    """A checked ``requestState``: its nonce (single use) and when it expires; for a
    continuation (an approved call whose upstream asked the client for input), the approval
    it continues and the upstream's own state (None when it gave none)."""

    nonce: str
    expires: float
    approval: str | None = None
    upstream: str | None = None
    epoch: str = ""  # the approval store's, when issued: a store that lost its state refuses
    #: A continuation's place in its call: how many rounds went before (the first: 1), and
    #: the decision that admitted the call (its record took the limits).
    rounds: int = 0
    origin: str = ""


#: An upstream's own ``requestState`` longer than this is not carried in the gateway's.
MAX_UPSTREAM_STATE = 16 * 1024


def is_gateway_state(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(STATE_PREFIX)


def _binding(key: bytes, call: Call, revision: str) -> dict[str, str]:
    return {
        "g": call.identity.grant,
        "a": call.identity.agent,
        "s": call.server or "",
        "t": call.tool,
        "d": args_digest(call.args),
        # keyed: the state is readable, and the revision, an unkeyed digest of the policy,
        # let an agent check its guesses of hidden tools and rule constants (wave 40)
        "r": _mac(key, "revision", revision),
    }


def issue_state(
    key: bytes,
    call: Call,
    revision: str,
    expires: float,
    approval: str | None = None,
    upstream: str | None = None,
    *,
    epoch: str,
    rounds: int = 0,
    origin: str = "",
) -> str:
    """A state bound to ``call``: a question's, or with ``approval`` a continuation's (the
    approved call goes on without being asked again, carrying ``upstream``'s state). ``epoch``
    is the approval store's (``OnceStore.epoch``): a state is used at most once, and a store
    that lost what it knew (a Valkey restarted without persistence) has a new epoch, so the
    states issued before cannot be used again."""
    payload: dict[str, Any] = {
        "n": secrets.token_urlsafe(16),
        "e": round(expires, 3),
        "p": epoch,
        "b": _binding(key, call, revision),  # apart: no field of it can read as "a" or "u"
    }
    if approval is not None:
        payload["a"] = approval
        payload["k"] = rounds
        payload["o"] = origin
        if upstream is not None:
            payload["u"] = upstream
    body = base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    return f"{STATE_PREFIX}{body}.{_mac(key, 'elicit-state', body)}"


def check_state(
    key: bytes, token: str, call: Call, revision: str, now: float
) -> State | StateProblem:
    """The state if it was issued here for exactly this call and has not expired."""
    payload = _payload(key, token)
    if payload is None:
        return "approval_state_invalid"
    try:
        nonce, expires, epoch = str(payload["n"]), float(payload["e"]), str(payload["p"])
        bound = payload["b"]
        approval, upstream = payload.get("a"), payload.get("u")
        rounds, origin = int(payload.get("k", 0)), str(payload.get("o", ""))
    except (ValueError, KeyError, TypeError):
        return "approval_state_invalid"  # cannot happen with a valid MAC, but fail closed
    expected = _binding(key, call, revision)
    if bound != expected:
        # the same call under another policy revision: not another call
        same_call = isinstance(bound, dict) and {**bound, "r": expected["r"]} == expected
        return "approval_policy_changed" if same_call else "approval_state_mismatch"
    if now >= expires:
        return "approval_expired"
    return State(nonce, expires, approval, upstream, epoch, rounds, origin)


def continues(key: bytes, token: Any) -> bool:
    """Whether ``token`` is a continuation's state issued here (one naming an approval)."""
    payload = _payload(key, token)
    return payload is not None and isinstance(payload.get("a"), str)


def _payload(key: bytes, token: Any) -> dict[str, Any] | None:
    if not isinstance(token, str):
        return None
    body, dot, mac = token.removeprefix(STATE_PREFIX).rpartition(".")
    if not dot or not same_text(mac, _mac(key, "elicit-state", body)):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body.encode()))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def upstream_state(key: bytes, token: str) -> str | None:
    """The upstream's own state a continuation issued here carries, or None (no such state,
    or not one of ours: the call is decided, and refused, before anything is forwarded)."""
    payload = _payload(key, token)
    value = payload.get("u") if payload is not None else None
    return value if isinstance(value, str) else None


@runtime_checkable
class OnceStore(Protocol):
    """The approval store's single-use check (``gateway.approvals.stores``): ``epoch`` is the
    store's as last seen (a state is issued under it), ``current_epoch`` asks for it."""

    epoch: str

    async def current_epoch(self, fresh: bool = False) -> str: ...

    async def consume_once(self, token: str, ttl: float, epoch: str, owner: str = "") -> bool: ...


_ONCE_TYPES: dict[type, bool] = {}


def once_store(store: object) -> OnceStore | None:
    """``store`` when it has the single-use check, else None. A runtime-checkable protocol's
    ``isinstance`` walks the class's members each time (7% of a 2026-07-28 call's work in
    process); the answer is the same for every store of one type, so it is kept by type."""
    kind = type(store)
    known = _ONCE_TYPES.get(kind)
    if known is None:
        known = _ONCE_TYPES[kind] = isinstance(store, OnceStore)
    return store if known else None  # type: ignore[return-value]


# ----------------------------------------------------------------- process-local parts


class Waiters:
    """Held calls (2025-11-25) waiting for their client's answer, by nonce."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def expect(self, nonce: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[nonce] = future
        return future

    def forget(self, nonce: str) -> None:
        self._futures.pop(nonce, None)

    def deliver(self, nonce: str, answer: dict[str, Any]) -> bool:
        """Hand an answer to its waiting call; False when none waits (answered, gone)."""
        future = self._futures.pop(nonce, None)
        if future is None or future.done():
            return False
        future.set_result(answer)
        return True


def takes_forms(caps: Any) -> bool:
    """Whether a client's capabilities say it takes a form-mode elicitation (the gateway's
    approval question): ``elicitation`` an object naming ``form``, or naming neither
    ``form`` nor ``url`` (as MCP reads ``{}``). A client that named ``url`` alone was asked
    a form anyway, refused it, and its call could never be approved (red-team wave 72)."""
    elicitation = caps.get("elicitation") if isinstance(caps, dict) else None
    if not isinstance(elicitation, dict):
        return False
    return "form" in elicitation or "url" not in elicitation


class ClientCapabilities:
    """Whether each session's client declared elicitation at ``initialize``: at most ``size``
    sessions per owner (a grant's agent), the least recently opened going first, and at most
    ``owners`` owners, the least recently active going first. One owner opening sessions by
    the thousand pushes out only its own (before, one list for all grants let it push every
    other grant's sessions back to the out-of-band fallback; then one list per grant let one
    user of an OAuth client push out the others', and an upstream handing every client one
    session id let one user's ``initialize`` say what another's client could do)."""

    def __init__(self, size: int = 10_000, owners: int = 10_000) -> None:
        self._known: OrderedDict[str, OrderedDict[tuple[str, str], bool]] = OrderedDict()
        self._size = size
        self._owners = owners

    def remember(self, server: str, owner: str, session: str, elicits: bool) -> None:
        known = self._known.get(owner)
        if known is None:
            known = self._known[owner] = OrderedDict()
        self._known.move_to_end(owner)
        known[(server, session)] = elicits
        known.move_to_end((server, session))
        while len(known) > self._size:
            known.popitem(last=False)
        while len(self._known) > self._owners:
            self._known.popitem(last=False)

    def elicits(self, server: str, owner: str, session: str | None) -> bool:
        known = self._known.get(owner)
        return session is not None and known is not None and known.get((server, session), False)


@dataclass(slots=True)
class InBand:
    """The gateway's process-local in-band state (kept in ``Gateway.extras``)."""

    waiters: Waiters
    clients: ClientCapabilities


def in_band(extras: dict[str, Any]) -> InBand:
    found = extras.get("celgate.in_band")
    if not isinstance(found, InBand):
        found = extras["celgate.in_band"] = InBand(Waiters(), ClientCapabilities())
    return found
