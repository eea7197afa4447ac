"""The running gateway's parts, built once from config and passed explicitly (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.approval_stores import make_store
from gateway.approvals import ApprovalService
from gateway.audit import DecisionLog
from gateway.config import GatewayConfig
from gateway.edge.guard import HostGuard, SessionSigner
from gateway.identity import Authenticator
from gateway.metrics import Metrics
from gateway.policy import CompiledPolicy, ToolInfo, load_policy
from gateway.ratelimit.base import RateLimiter
from gateway.ratelimit.factory import make_limiter
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
    extras: dict[str, Any] = field(default_factory=dict)

    def tool_info(self, server: str, tool: str) -> ToolInfo:
        return self.catalog.get((server, tool)) or ToolInfo()

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
        await self.limiter.close()
        if self.approvals is not None:
            await self.approvals.store.close()


def build_gateway(config: GatewayConfig, *, anonymous: bool | None = None) -> Gateway:
    """Load the policy and wire the parts; raises ConfigError on a bad policy."""
    policy = load_policy(config.policy_paths)
    upstreams = {
        name: StdioUpstream(server) if server.is_stdio else HttpUpstream(server)
        for name, server in config.servers.items()
    }
    allow_anonymous = (not config.grants) if anonymous is None else anonymous
    gateway = Gateway(
        config=config,
        policy=policy,
        upstreams=upstreams,
        auth=Authenticator.from_grants(config.grants, allow_anonymous),
        limiter=make_limiter(config.limits_backend),
        decisions=DecisionLog(log_arguments=config.log_arguments),
        signer=SessionSigner(config.session_secret),
        guard=HostGuard(
            config.security.allowed_hosts, config.security.allowed_origins, config.host
        ),
    )
    gateway.metrics = Metrics()
    gateway.metrics.set_policy(policy.revision)
    store = make_store(config.limits_backend)
    gateway.approvals = ApprovalService(store, on_event=gateway.metrics.approval)
    return gateway
