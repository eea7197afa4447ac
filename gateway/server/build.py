"""The composition root: a ``Gateway`` built once from config (policy, upstreams, keys,
limits, approvals, records), then handed to the app and the background components."""

from __future__ import annotations

import structlog

from gateway.approvals.service import ApprovalService
from gateway.approvals.stores import make_store
from gateway.auth.guard import HostGuard, SessionSigner
from gateway.auth.identity import build_authenticator
from gateway.config import GatewayConfig
from gateway.inventory.pins import Pins
from gateway.pipeline.gateway import Gateway
from gateway.policy import load_policy
from gateway.policy.engines import get_engine
from gateway.policy.servers import check_servers
from gateway.ratelimit.factory import make_limiter, shared_client
from gateway.server.console.sessions import make_sessions
from gateway.telemetry.audit import DecisionLog
from gateway.telemetry.metrics import Metrics
from gateway.upstream.http import HttpUpstream
from gateway.upstream.stdio import StdioUpstream

log = structlog.get_logger("celgate")


def build_gateway(config: GatewayConfig) -> Gateway:
    """Load the policy and wire the parts; raises ConfigError on a bad policy."""
    policy = load_policy(config.policy, get_engine(config.cel.engine))
    told = [str(problem) for problem in check_servers(policy, config.servers)]
    for problem in told:
        log.warning("policy.warning", problem=problem)
    limits = config.limits
    valkey = shared_client(limits.backend, timeout_ms=limits.timeout_ms)  # one pool, or None
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
        limiter=make_limiter(limits.backend, key_prefix=limits.key_prefix, client=valkey),
        decisions=DecisionLog(log_arguments=config.audit.log_arguments),
        signer=SessionSigner(config.sessions.secret),
        guard=HostGuard(
            config.security.allowed_hosts, config.security.allowed_origins, config.listen.host
        ),
    )
    gateway.extras["policy_warnings"] = told  # the console shows them (admin /policy)
    gateway.pins = Pins.load(config.pins.file, config.pins.accept_changes)
    gateway.metrics = Metrics()
    gateway.metrics.set_policy(policy.revision)
    store = make_store(limits.backend, key_prefix=limits.key_prefix, client=valkey)
    approvals = ApprovalService(store, on_event=gateway.metrics.approval, caps=config.approvals)
    gateway.approvals = approvals
    gateway.extras["console_sessions"] = make_sessions(valkey, limits.key_prefix)
    if valkey is not None:
        gateway.extras["valkey"] = valkey
    return gateway
