"""``GatewayConfig``: the whole file, one field per top-level key (DESIGN.md, "Gateway config")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth.settings import GrantConfig, OAuthConfig
from gateway.config.sections import (
    AdminConfig,
    AggregateConfig,
    ApprovalsConfig,
    AuditConfig,
    CelConfig,
    LimitsConfig,
    ListenConfig,
    PinsConfig,
    RelayConfig,
    SecurityConfig,
    ServerConfig,
    SessionsConfig,
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything ``celgate run`` needs."""

    source: str  # the file's name as given, or what stands in for one
    listen: ListenConfig = field(default_factory=ListenConfig)
    policy: tuple[Path, ...] = ()  # rule files and folders
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    grants: dict[str, GrantConfig] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    pins: PinsConfig = field(default_factory=PinsConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    cel: CelConfig = field(default_factory=CelConfig)
    anonymous: bool = False  # keyless callers, on loopback only
    relay: RelayConfig = field(default_factory=RelayConfig)
    # Access tokens from an identity provider, beside the keys of ``grants`` (docs/oauth.md)
    oauth: OAuthConfig | None = None
