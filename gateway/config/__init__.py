"""The gateway config file (DESIGN.md, "Gateway config"), validated like rule files.

Paths are relative to the file; ``${VAR}`` takes a value from the environment, and a missing
variable is an error (a secret must never silently become an empty string).

- ``sections``: one frozen dataclass per section of the file; each default is stated there
- ``model``: ``GatewayConfig``, the whole file, one field per top-level key
- ``read``: located field readers the sections share, and ``build`` (absent fields keep defaults)
- ``servers``: ``servers:``, HTTP and stdio upstreams and their ``/mcp`` name prefixes
- ``load``: ``load_config``, every other section, one ``ConfigError`` with every problem
"""

from gateway.config.load import LOOPBACK_HOSTS, load_config
from gateway.config.model import GatewayConfig
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

__all__ = [
    "LOOPBACK_HOSTS",
    "AdminConfig",
    "AggregateConfig",
    "ApprovalsConfig",
    "AuditConfig",
    "CelConfig",
    "GatewayConfig",
    "LimitsConfig",
    "ListenConfig",
    "PinsConfig",
    "RelayConfig",
    "SecurityConfig",
    "ServerConfig",
    "SessionsConfig",
    "load_config",
]
