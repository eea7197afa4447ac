"""The running gateway's parts, built once from config and passed explicitly (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.approvals.service import ApprovalCaps, ApprovalService
from gateway.approvals.stores import make_store
from gateway.auth.guard import HostGuard, SessionSigner
from gateway.auth.identity import Authenticator, build_authenticator
from gateway.config import GatewayConfig
from gateway.inventory.catalog import tool_info as catalog_info
from gateway.inventory.pins import Pins
from gateway.policy import CompiledPolicy, ToolInfo, load_policy
from gateway.policy.engines import get_engine
from gateway.ratelimit.base import RateLimiter
from gateway.ratelimit.factory import make_limiter
from gateway.telemetry.audit import DecisionLog
from gateway.telemetry.metrics import Metrics
from gateway.upstream.http import HttpUpstream
from gateway.upstream.stdio import StdioUpstream


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    pins: Pins = field(default_factory=Pins)
    extras: dict[str, Any] = field(default_factory=dict)

    def tool_info(self, server: str, tool: str) -> ToolInfo:
        """What CEL sees as ``tool``; a tool not listed yet is classified by its name."""
        known = self.catalog.get((server, tool))
        if known is not None:
            return known
        return catalog_info(self.policy, server, {"name": tool})

    def observe(self, server: str, tool: dict[str, Any]) -> tuple[ToolInfo, str]:
        """Record a tool definition seen on the wire: its risk, and its pin (new, same or
        changed)."""
        info = catalog_info(self.policy, server, tool)
        self.catalog[(server, str(tool.get("name", "")))] = info
        return info, self.pins.observe(server, tool)

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
        await self.limiter.close()
        await self.auth.close()
        if self.approvals is not None:
            await self.approvals.store.close()


def build_gateway(config: GatewayConfig) -> Gateway:
    """Load the policy and wire the parts; raises ConfigError on a bad policy."""
    policy = load_policy(config.policy_paths, get_engine(config.cel_engine))
    upstreams = {
        name: StdioUpstream(server) if server.is_stdio else HttpUpstream(server)
        for name, server in config.servers.items()
    }
    gateway = Gateway(
        config=config,
        policy=policy,
        upstreams=upstreams,
        auth=build_authenticator(
            config.grants, config.anonymous, config.oauth, list(config.servers)
        ),
        limiter=make_limiter(
            config.limits_backend,
            busy_poll_us=config.limits_busy_poll_us,
            timeout_ms=config.limits_timeout_ms,
            key_prefix=config.limits_key_prefix,
        ),
        decisions=DecisionLog(log_arguments=config.log_arguments),
        signer=SessionSigner(config.session_secret),
        guard=HostGuard(
            config.security.allowed_hosts, config.security.allowed_origins, config.host
        ),
    )
    gateway.pins = Pins.load(config.pins_file, config.accept_tool_changes)
    gateway.metrics = Metrics()
    gateway.metrics.set_policy(policy.revision)
    store = make_store(
        config.limits_backend,
        key_prefix=config.limits_key_prefix,
        timeout_ms=config.limits_timeout_ms,
    )
    caps = ApprovalCaps(config.approvals_max_pending_per_grant, config.approvals_max_pending)
    gateway.approvals = ApprovalService(store, on_event=gateway.metrics.approval, caps=caps)
    return gateway
