"""The ``Gateway`` type: the running gateway's parts, passed explicitly (no globals).

It sits under its users (the pipeline, the faces, the server); ``gateway.server.build`` builds
it from config."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map

from gateway.approvals.service import ApprovalService
from gateway.auth.guard import HostGuard, SessionSigner
from gateway.auth.identity import Authenticator
from gateway.config import GatewayConfig
from gateway.inventory.pins import Pins
from gateway.inventory.shapes import Shape, shape_of
from gateway.policy import CompiledPolicy, ToolInfo
from gateway.policy.matching import fold
from gateway.policy.risk import tool_info as catalog_info
from gateway.ratelimit.base import RateLimiter
from gateway.telemetry.audit import DecisionLog, flush_logs
from gateway.telemetry.metrics import Metrics
from gateway.upstream.http import HttpUpstream

#: Tool names not listed by any upstream whose classification is kept (callers choose them).
MAX_UNLISTED = 1024
#: Tools of one server the catalogue keeps (kind, risk, argument shapes); past it the least
#: recently listed is forgotten (read again with the server's list when it is next called):
#: an upstream that renames its tools on every list would otherwise grow it without bound.
MAX_KNOWN_TOOLS = 20_000
#: Of names up to this long (MCP's longest recommended tool name): 1,024 names of a body's
#: size each would be gigabytes.
MAX_CACHED_NAME = 128

#: Notifications and answers to server requests one agent may have on their way upstream
#: at once (each waits for its server's 202).
NOTICES = 32


def utcnow() -> datetime:
    return datetime.now(UTC)


class InProgress:
    """How many requests each caller (``Identity.owner``: a grant's agent) has in progress,
    at most ``cap`` each: one caller's streams and held calls cannot take every connection
    the gateway has, nor another user's places in a grant they share."""

    __slots__ = ("cap", "counts")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}

    def begin(self, owner: str) -> bool:
        count = self.counts.get(owner, 0)
        if count >= self.cap:
            return False
        self.counts[owner] = count + 1
        return True

    def done(self, owner: str) -> None:
        count = self.counts.get(owner, 0) - 1
        if count > 0:
            self.counts[owner] = count
        else:
            self.counts.pop(owner, None)


class HeldBodies:
    """What the request bodies in progress hold, counted at ``BODY_FACTOR`` times their bytes
    (the bytes, their text, their parse, the copy sent on): at most ``cap`` in all, and a
    quarter of it per caller (``Identity.owner``). One agent's requests in progress, each
    holding a body of up to ``max_body_bytes``, took the gateway to gigabytes."""

    __slots__ = ("cap", "owned", "total")

    #: Bodies smaller than this are not counted (every call has one; together they are
    #: bounded by the requests in progress).
    SMALL = 64 * 1024
    BODY_FACTOR = 4

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.owned: dict[str, int] = {}

    def cost(self, size: int) -> int:
        return 0 if size < self.SMALL else size * self.BODY_FACTOR

    def take(self, owner: str, cost: int) -> str | None:
        """None when ``cost`` is taken; else whose share it would pass: ``agent`` or ``all``."""
        held = self.owned.get(owner, 0)
        if held + cost > self.cap // 4:
            return "agent"
        if self.total + cost > self.cap:
            return "all"
        self.owned[owner] = held + cost
        self.total += cost
        return None

    def give(self, owner: str, cost: int) -> None:
        self.total -= cost
        held = self.owned.get(owner, 0) - cost
        if held > 0:
            self.owned[owner] = held
        else:
            self.owned.pop(owner, None)


#: Kinds and risks from the least to the most a tool may do.
_KIND_RANK = {"read": 0, "write": 1, "delete": 2, "execute": 3}
_RISK_RANK = {"low": 0, "medium": 1, "high": 2}


def _riskier(info: ToolInfo, known: ToolInfo | None) -> bool:
    """Whether ``info`` is to replace ``known`` (none yet, or one that may do less)."""
    if known is None or not known.listed:
        return True
    mine = (_RISK_RANK.get(info.risk, 3), _KIND_RANK.get(info.kind, 4))
    theirs = (_RISK_RANK.get(known.risk, 3), _KIND_RANK.get(known.kind, 4))
    return mine > theirs


@dataclass
class Gateway:
    """Policy, upstreams, identity, limits, approvals and records of one gateway process."""

    config: GatewayConfig
    policy: CompiledPolicy
    upstreams: dict[str, HttpUpstream]
    auth: Authenticator
    limiter: RateLimiter
    decisions: DecisionLog
    signer: SessionSigner
    guard: HostGuard
    now: Callable[[], datetime] = utcnow
    approvals: ApprovalService | None = None
    metrics: Metrics | None = None
    catalog: dict[tuple[str, str], ToolInfo] = field(default_factory=dict)
    # the input schemas of tools whose arguments travel as Mcp-Param-* headers too
    param_schemas: dict[tuple[str, str], Any] = field(default_factory=dict)
    # the JSON types each listed tool's inputSchema declares for its arguments
    arg_shapes: dict[tuple[str, str], Shape] = field(default_factory=dict)
    pins: Pins = field(default_factory=Pins)
    extras: dict[str, Any] = field(default_factory=dict)
    # Reads one server's tools into the catalogue again (set while the gateway runs): a call
    # to a tool the catalogue does not have waits for it, so its schema is known first.
    relist: Callable[[str], Awaitable[None]] | None = field(default=None, repr=False)
    # Tools not listed yet, classified by name once per policy (names come from callers:
    # bounded), and the policy the catalogue was classified under (a reload may override a
    # kind or a risk: everything is classified again, once).
    unlisted: dict[tuple[str, str], ToolInfo] = field(default_factory=dict, repr=False)
    classified_under: CompiledPolicy | None = field(default=None, repr=False)
    # Each server's listed tool names, least recently listed first (MAX_KNOWN_TOOLS)
    known_tools: dict[str, OrderedDict[str, None]] = field(default_factory=dict, repr=False)
    # Tools whose definition the gateway's own reading gave (``observe(..., own=True)``):
    # a caller's list never replaces what that reading learned of them.
    read_here: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _names_added: int = field(default=0, repr=False)
    _folded: dict[str, tuple[Any, tuple[frozenset[str], frozenset[str]]]] = field(
        default_factory=dict, repr=False
    )
    # MCP requests in progress per agent of a grant (security.max_requests_per_agent)
    in_progress: InProgress = field(init=False, repr=False)
    reading: InProgress = field(init=False, repr=False)
    notices: InProgress = field(init=False, repr=False)
    bodies: HeldBodies = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.in_progress = InProgress(self.config.security.max_requests_per_agent)
        self.bodies = HeldBodies(self.config.security.max_bodies_bytes)
        #: POSTs whose bodies are still coming, per caller, under the same cap.
        self.reading = InProgress(self.config.security.max_requests_per_agent)
        #: Notifications and answers being passed on, per caller, apart from requests (a
        #: cancel passes when its caller's requests are at the cap), a few at once: a pool
        #: as large as the requests' let one agent hold three times the cap in connections.
        self.notices = InProgress(min(self.config.security.max_requests_per_agent, NOTICES))

    def tool_info(self, server: str, tool: str) -> ToolInfo:
        """What CEL sees as ``tool``; a tool not listed yet is execute/high (policy aside)."""
        if self.classified_under is not self.policy:
            self._classify_again()
        known = self.catalog.get((server, tool)) or self.unlisted.get((server, tool))
        if known is not None:
            return known
        known = catalog_info(self.policy, server, {"name": tool}, listed=False)
        if len(self.unlisted) < MAX_UNLISTED and len(tool) <= MAX_CACHED_NAME:
            self.unlisted[(server, tool)] = known
        return known

    def _classify_again(self) -> None:
        """Kinds and risks under the policy now in force (its overrides may have changed)."""
        self.classified_under = self.policy
        self.unlisted.clear()
        for (server, name), info in self.catalog.items():
            tool = {"name": name, "annotations": info.annotations}
            self.catalog[(server, name)] = catalog_info(self.policy, server, tool)

    def folded_names(self, server: str) -> tuple[frozenset[str], frozenset[str]]:
        """The names ``server`` listed and the tool names the policy gives (its own or any
        server's), as they are and folded (``enforce.fold``): kept until either changes."""
        key = (self.policy, self._names_added)  # a name listed anew (or dropped) adds one
        cached = self._folded.get(server)
        if cached is not None and cached[0] == key:
            return cached[1]
        names = [*self.known_tools.get(server, ())]
        names += [tool for (where, tool) in self.policy.exact if where in (None, server)]
        found = (frozenset(names), frozenset(fold(name) for name in names))
        self._folded[server] = (key, found)
        return found

    def _remember(self, server: str, name: str) -> None:
        names = self.known_tools.setdefault(server, OrderedDict())
        if name not in names:
            self._names_added += 1
        names[name] = None
        names.move_to_end(name)
        if len(names) > MAX_KNOWN_TOOLS:
            old, _ = names.popitem(last=False)
            for table in (self.catalog, self.arg_shapes, self.param_schemas):
                table.pop((server, old), None)
            self.read_here.discard((server, old))

    def observe(self, server: str, tool: dict[str, Any], own: bool = False) -> tuple[ToolInfo, str]:
        """Record a tool definition seen on the wire: its risk, and its pin (new, same or
        changed). ``own``: the gateway's own reading of the server's tools (at start, every
        five minutes, on an unknown name), which alone decides a tool's kind, risk and
        argument schemas once it has seen it. A caller's list (``own`` False) only adds
        tools that reading has not seen, and between callers the riskier definition stays:
        an upstream that shows each session its own definitions (by its client's name, or
        a toolset it enabled) let one client's list decide how another's calls were
        classified, and lower a tool held for approval to one allowed (red-team wave 38).
        Every definition still goes to the pins: one that differs is a change, refused."""
        info = catalog_info(self.policy, server, tool)
        name = str(tool.get("name", ""))
        key = (server, name)
        if own:
            self.read_here.add(key)
        elif key in self.read_here or not _riskier(info, self.catalog.get(key)):
            self._remember(server, name)
            return self.catalog[key], self.pins.observe(server, tool)
        self.catalog[key] = info
        self._remember(server, name)
        schema = tool.get("inputSchema")
        shape = shape_of(schema)
        if shape is not None:
            self.arg_shapes[(server, name)] = shape
        else:
            self.arg_shapes.pop((server, name), None)
        if x_mcp_header_map(schema) and find_invalid_x_mcp_header(schema) is None:
            self.param_schemas[(server, name)] = schema  # its Mcp-Param-* headers (SEP-2243)
        else:
            self.param_schemas.pop((server, name), None)
        return info, self.pins.observe(server, tool)

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
        await self.limiter.close()
        await self.auth.close()
        if self.approvals is not None:
            await self.approvals.store.close()
        flush_logs()  # whatever the log stream still buffers, before the loop stops
