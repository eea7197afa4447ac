"""One frozen dataclass per section of the config file, each default stated here and only here.

The loader (``gateway.config.load``) passes a section only the fields the file gives; every
other field keeps the default below. Field names are the file's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """``listen:``: where the gateway serves."""

    host: str = "127.0.0.1"
    port: int = 8787
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (load balancers); from
    # anyone else the headers are ignored and request.ip is the TCP peer.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One entry of ``servers:``: Streamable HTTP (``url``) or stdio (``command``)."""

    name: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0  # seconds; on stdio, an answer's deadline
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_processes: int = 16  # stdio: processes (one per handshake-era session), all grants
    max_processes_per_grant: int = 8  # stdio: of those, at most this many for one grant
    idle_timeout: float = 600.0
    # http: handshake-era sessions held through the relay (gateway.upstream.sessions), per
    # replica: in all and per caller (a new one past either is refused), and the seconds
    # one may go without a request before it is ended upstream
    max_sessions: int = 4096
    max_sessions_per_grant: int = 256
    session_idle: float = 3600.0
    # at its cap, a caller's session idle this long gives way to its new one
    session_give_way: float = 10.0
    ca_file: str | None = None  # https:// upstreams: trust this CA bundle, not the system's
    prefix: str | None = None  # names on /mcp: ``<prefix><sep><name>``; None: the server's name

    @property
    def name_prefix(self) -> str:
        return self.name if self.prefix is None else self.prefix

    @property
    def is_stdio(self) -> bool:
        return self.command is not None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``limits:``: where the token buckets (and held approvals) live."""

    backend: str = "memory"  # or valkey://, valkeys://, unix://
    timeout_ms: int = 500  # one Valkey exchange, connecting included
    key_prefix: str = "celgate:"  # Valkey keys: <prefix>rl:... and <prefix>ap:...


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``admin:``: the admin API's token, and whether /metrics needs it."""

    token_sha256: str | None = None
    metrics_public: bool = False


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    """``approvals:``: held calls that may wait for a human at once, per grant and in all
    (gateway.approvals.service)."""

    max_pending_per_grant: int = 20
    max_pending: int = 1000


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit:``: what a decision record holds."""

    log_arguments: bool = False  # else only a digest of the arguments


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``security:``: DNS-rebinding protection and request limits of the MCP endpoint."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    # What one client connection may cost before it is authenticated (gateway.wire.protocol).
    max_head_bytes: int = 32 * 1024  # request line and headers, as sent
    max_headers: int = 100
    head_timeout: float = 10.0  # seconds for a whole head, from connect or a request's 1st byte
    body_timeout: float = 30.0  # seconds for a whole body, from the end of its head
    keepalive_timeout: float = 5.0  # seconds an idle kept-alive connection stays open
    max_connections: int = 1000  # open client connections, SSE streams included
    # A client that reads nothing of what it was sent (its connection's unsent bytes past the
    # transport's high-water mark growing no smaller) for this long is cut ...
    send_timeout: float = 30.0
    # ... and what all such clients leave unread is at most this (past it, the connection
    # that stopped reading first is cut).
    max_unsent_bytes: int = 256 * 1024 * 1024
    # What the request bodies in progress may hold in all (bodies over 64 KiB, counted at four
    # times their bytes: their text, their parse); one agent at most a quarter of it.
    max_bodies_bytes: int = 512 * 1024 * 1024
    # MCP requests of one agent (of one grant) in progress at once, streams and held calls
    # included, per replica: past it 429, so that no one client holds every connection.
    max_requests_per_agent: int = 256


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """``sessions:``: the key upstream session ids are signed with (None: a random one per
    process, so sessions do not survive a restart or move between replicas)."""

    secret: str | None = None


@dataclass(frozen=True, slots=True)
class PinsConfig:
    """``pins:``: the file of pinned tool definitions, and whether a changed tool is accepted."""

    file: Path | None = None
    accept_changes: bool = False


@dataclass(frozen=True, slots=True)
class AggregateConfig:
    """``aggregate:``: the one /mcp endpoint over every server (gateway.edge.agg)."""

    separator: str = "__"  # between a server's prefix and a tool or prompt name
    # sessions of the handshake era: at most this many per grant and in all, closed after
    # this many idle seconds
    max_sessions_per_grant: int = 64
    max_sessions: int = 1024
    idle_timeout: float = 600.0
    # at its cap, an agent's session unused this long gives way to its new one
    give_way: float = 10.0


@dataclass(frozen=True, slots=True)
class CelConfig:
    """``cel:``: which CEL engine compiles and runs the rules (gateway.policy.engines)."""

    engine: str = "cel-python"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """``relay:``: JSON-RPC request methods the relay forwards beyond the ones it knows
    (``gateway.wire.jsonrpc.classify``), and server methods it lets reach clients."""

    #: Methods a client may send beyond MCP's own (``jsonrpc.CLIENT_REQUEST_METHODS`` and
    #: ``CLIENT_NOTIFICATION_METHODS``): a name under ``notifications/`` is a notice (no id).
    extra_methods: frozenset[str] = frozenset()
    #: Methods a server may send its client beyond MCP's own (``jsonrpc.SERVER_METHODS``):
    #: a name under ``notifications/`` is a notice (no id), any other a request.
    extra_server_methods: frozenset[str] = frozenset()
