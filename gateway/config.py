"""The gateway config file (DESIGN.md, "Gateway config"), validated like rule files.

Paths are relative to the file; ``${VAR}`` takes a value from the environment, and a missing
variable is an error (a secret must never silently become an empty string).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.auth.settings import GrantConfig, OAuthConfig, parse_oauth
from gateway.errors import ConfigError, Problem, SourceLocation
from gateway.located import Node, parse_file
from gateway.policy.schema import Fields
from gateway.ratelimit.factory import backend_problem

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:{}-]{1,64}$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_TOP = {
    "listen",
    "policy",
    "servers",
    "limits",
    "grants",
    "admin",
    "audit",
    "security",
    "sessions",
    "pins",
    "aggregate",
    "approvals",
    "cel",
    "anonymous",
    "relay",
    "oauth",
}
_HTTP_SERVER = {"url", "headers", "timeout", "ca_file", "prefix"}
# security: fields bounding client connections, and whether each is a whole number
_CONNECTION_LIMITS = {
    "max_head_bytes": True,
    "max_headers": True,
    "head_timeout": False,
    "body_timeout": False,
    "keepalive_timeout": False,
    "max_connections": True,
}
_STDIO_SERVER = {
    "command",
    "args",
    "env",
    "cwd",
    "max_processes",
    "idle_timeout",
    "timeout",
    "prefix",
}
# A tool or prompt name prefix on /mcp (``<prefix><sep><name>``); empty: names as they are.
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """An upstream MCP server: Streamable HTTP (``url``) or stdio (``command``)."""

    name: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_processes: int = 16
    idle_timeout: float = 600.0
    ca_file: str | None = None  # https:// upstreams: trust this CA bundle, not the system's
    prefix: str | None = None  # names on /mcp: ``<prefix><sep><name>``; None: the server's name

    @property
    def name_prefix(self) -> str:
        return self.name if self.prefix is None else self.prefix

    @property
    def is_stdio(self) -> bool:
        return self.command is not None


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """DNS-rebinding protection and request limits of the MCP endpoint."""

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


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything ``celgate run`` needs."""

    source: str
    host: str = "127.0.0.1"
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (load balancers); from
    # anyone else the headers are ignored and request.ip is the TCP peer.
    trusted_proxies: tuple[str, ...] = ()
    port: int = 8787
    policy_paths: tuple[Path, ...] = ()
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    limits_backend: str = "memory"
    limits_busy_poll_us: int | None = None  # None: the Valkey limiter's default
    limits_timeout_ms: int = 500  # one Valkey exchange, connecting included
    limits_key_prefix: str = "celgate:"  # Valkey keys: <prefix>rl:... and <prefix>ap:...
    grants: dict[str, GrantConfig] = field(default_factory=dict)
    admin_token_sha256: str | None = None
    # Held calls that may wait for a human at once, per grant and in all (gateway.approvals.service)
    approvals_max_pending_per_grant: int = 20
    approvals_max_pending: int = 1000
    log_arguments: bool = False
    security: SecurityConfig = field(default_factory=SecurityConfig)
    session_secret: str | None = None
    pins_file: Path | None = None
    accept_tool_changes: bool = False
    aggregate_separator: str = "__"
    # /mcp sessions of the handshake era: at most this many per grant and in all, and closed
    # after this many idle seconds (gateway.edge.agg)
    aggregate_max_sessions_per_grant: int = 64
    aggregate_max_sessions: int = 1024
    aggregate_idle_timeout: float = 600.0
    anonymous: bool = False
    cel_engine: str = "cel-python"
    metrics_public: bool = False
    # JSON-RPC request methods the relay forwards beyond the ones it knows (gateway.edge.methods)
    relay_extra_methods: frozenset[str] = frozenset()
    # Access tokens from an identity provider, beside the keys of ``grants`` (docs/oauth.md)
    oauth: OAuthConfig | None = None


def _expand(node: Node, env: dict[str, str], problems: list[Problem]) -> None:
    """Replace ``${VAR}`` in every string, in place."""
    value = node.value
    if isinstance(value, dict):
        for child in value.values():
            _expand(child, env, problems)
    elif isinstance(value, list):
        for child in value:
            _expand(child, env, problems)
    elif isinstance(value, str) and "${" in value:

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(Problem(node.where, "", f"environment variable {name} is not set"))
                return ""
            return env[name]

        node.value = _VAR.sub(sub, value)


class _ConfigLoader:
    def __init__(self, path: Path, display: str) -> None:
        self.base = path.parent
        self.display = display
        self.problems: list[Problem] = []
        self.out: dict[str, Any] = {"source": display}

    def err(self, where: SourceLocation, field_: str, message: str) -> None:
        self.problems.append(Problem(where, field_, message))

    def load(self, root: Node) -> None:
        top = Fields(root, "", self.problems)
        if not top.ok:
            return
        top.check_known(_TOP)
        self._listen(top)
        self._policy(top)
        self._servers(top)
        self._limits(top)
        self._grants(top)
        self._admin(top)
        self._approvals(top)
        self._audit(top)
        self._security(top)
        self._sessions(top)
        self._pins(top)
        self._aggregate(top)
        self._cel(top)
        self._oauth(top)
        self._anonymous(top)
        self._relay(top)

    def _sub(self, top: Fields, name: str, known: set[str]) -> Fields | None:
        node = top.get(name)
        if node is None:
            return None
        sub = Fields(node, name, self.problems)
        if not sub.ok:
            return None
        sub.check_known(known)
        return sub

    def _listen(self, top: Fields) -> None:
        sub = self._sub(top, "listen", {"host", "port", "trusted_proxies"})
        if sub is None:
            return
        self.out["host"] = sub.string("host") or "127.0.0.1"
        proxies = self._str_list(sub, "trusted_proxies")
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                msg = f"{proxy!r} is not an IP address or network"
                self.err(sub.where("trusted_proxies"), "listen.trusted_proxies", msg)
        self.out["trusted_proxies"] = tuple(proxies)
        port = sub.positive_int("port")
        if port is not None and port > 65535:
            self.err(sub.where("port"), "listen.port", f"{port} is not a TCP port")
        elif port is not None:
            self.out["port"] = port

    def _path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else self.base / path

    def _policy(self, top: Fields) -> None:
        node = top.get("policy")
        if node is None:
            self.err(top.node.where, "policy", "missing (a rule file or a folder of them)")
            return
        raws = node.value if isinstance(node.value, list) else [node]
        paths: list[Path] = []
        for item in raws:
            item_node = item if isinstance(item, Node) else node
            if not isinstance(item_node.value, str) or not item_node.value:
                self.err(item_node.where, "policy", "must be a path or a list of paths")
                continue
            path = self._path(item_node.value)
            if not path.exists():
                self.err(item_node.where, "policy", f"{item_node.value}: no such file or folder")
            paths.append(path)
        self.out["policy_paths"] = tuple(paths)

    def _servers(self, top: Fields) -> None:
        node = top.get("servers")
        if node is None:
            self.err(top.node.where, "servers", "missing (at least one upstream MCP server)")
            return
        if not isinstance(node.value, dict) or not node.value:
            self.err(node.where, "servers", "must be a mapping of names to servers")
            return
        servers: dict[str, ServerConfig] = {}
        prefixes: dict[str, str] = {}
        for name, sub_node in node.value.items():
            server = self._server(name, sub_node)
            if server is not None:
                servers[name] = self._prefixed(server, sub_node, prefixes)
        self.out["servers"] = servers

    def _prefixed(self, server: ServerConfig, node: Node, seen: dict[str, str]) -> ServerConfig:
        """``prefix:``: a name prefix no other server uses (an empty one may be shared; the
        aggregate refuses names that then collide when it builds its catalogue)."""
        path = f"servers.{server.name}.prefix"
        prefix_node = node.value.get("prefix") if isinstance(node.value, dict) else None
        prefix = server.name
        if prefix_node is not None:
            if not isinstance(prefix_node.value, str) or not _PREFIX.match(prefix_node.value):
                msg = "a prefix is up to 64 letters, digits, '_', '-' or '.' (or empty)"
                self.err(prefix_node.where, path, msg)
                return server
            prefix = prefix_node.value
            server = replace(server, prefix=prefix)
        where = prefix_node.where if prefix_node is not None else node.where
        if prefix and prefix in seen:
            self.err(where, path, f"prefix {prefix!r} is also servers.{seen[prefix]}'s")
        seen.setdefault(prefix, server.name)
        return server

    def _server(self, name: str, node: Node) -> ServerConfig | None:
        path = f"servers.{name}"
        if not _SERVER_NAME.match(name):
            self.err(node.where, path, "a server name is letters, digits, '_', '-' or '.'")
        sub = Fields(node, path, self.problems)
        if not sub.ok:
            return None
        is_stdio = sub.get("command") is not None
        if is_stdio == (sub.get("url") is not None):
            self.err(node.where, path, "give either `url` (Streamable HTTP) or `command` (stdio)")
            return None
        sub.check_known(_STDIO_SERVER if is_stdio else _HTTP_SERVER)
        if is_stdio:
            return self._stdio_server(name, sub)
        url = sub.string("url") or ""
        if not url.startswith(("http://", "https://")):
            self.err(sub.where("url"), f"{path}.url", "must be an http:// or https:// URL")
        timeout = sub.positive_number("timeout") or 30.0
        ca_file = sub.string("ca_file")
        ca_path: str | None = None
        if ca_file:
            ca_path = str(self._path(ca_file))
            if not url.startswith("https://"):
                self.err(sub.where("ca_file"), f"{path}.ca_file", "only applies to https:// URLs")
            elif not Path(ca_path).is_file():
                self.err(sub.where("ca_file"), f"{path}.ca_file", f"{ca_file}: no such file")
        headers = self._str_map(sub, "headers")
        return ServerConfig(name, url=url, headers=headers, timeout=timeout, ca_file=ca_path)

    def _stdio_server(self, name: str, sub: Fields) -> ServerConfig:
        args = self._str_list(sub, "args")
        cwd = sub.string("cwd")
        return ServerConfig(
            name,
            command=sub.string("command"),
            args=tuple(args),
            env=self._str_map(sub, "env"),
            cwd=str(self._path(cwd)) if cwd else None,
            max_processes=sub.positive_int("max_processes") or 16,
            idle_timeout=sub.positive_number("idle_timeout") or 600.0,
            timeout=sub.positive_number("timeout") or 30.0,  # an answer's deadline
        )

    def _str_map(self, sub: Fields, name: str) -> dict[str, str]:
        node = sub.get(name)
        if node is None:
            return {}
        if not isinstance(node.value, dict):
            self.err(node.where, f"{sub.path}.{name}", "must be a mapping of strings")
            return {}
        out: dict[str, str] = {}
        for key, item in node.value.items():
            if isinstance(item.value, str | int | float) and not isinstance(item.value, bool):
                out[key] = str(item.value).strip()
            else:
                self.err(item.where, f"{sub.path}.{name}.{key}", "must be a string")
        return out

    def _str_list(self, sub: Fields, name: str) -> list[str]:
        node = sub.get(name)
        if node is None:
            return []
        if not isinstance(node.value, list):
            self.err(node.where, f"{sub.path}.{name}", "must be a list of strings")
            return []
        return [str(item.value) for item in node.value]

    def _limits(self, top: Fields) -> None:
        known = {"backend", "busy_poll_us", "timeout_ms", "key_prefix"}
        sub = self._sub(top, "limits", known)
        if sub is None:
            return
        backend = sub.string("backend") or "memory"
        problem = backend_problem(backend)
        if problem:
            self.err(sub.where("backend"), "limits.backend", problem)
        self.out["limits_backend"] = backend
        self._whole(sub, "busy_poll_us", 0, 10_000, "microseconds", "limits_busy_poll_us")
        self._whole(sub, "timeout_ms", 10, 10_000, "milliseconds", "limits_timeout_ms")
        node = sub.get("key_prefix")
        if node is not None:
            if isinstance(node.value, str) and _KEY_PREFIX.fullmatch(node.value):
                self.out["limits_key_prefix"] = node.value
            else:
                msg = "must be 1 to 64 letters, digits or _ . : - { } (no spaces or globs)"
                self.err(node.where, "limits.key_prefix", msg)

    def _whole(self, sub: Fields, name: str, low: int, high: int, unit: str, out: str) -> None:
        """An optional whole number of ``unit`` from ``low`` to ``high``, stored as ``out``."""
        node = sub.get(name)
        if node is None:
            return
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            msg = f"must be a whole number of {unit} from {low} to {high}"
            self.err(node.where, f"{sub.path}.{name}", msg)
        else:
            self.out[out] = value

    def _grants(self, top: Fields) -> None:
        node = top.get("grants")
        if node is None:
            return
        if not isinstance(node.value, dict):
            self.err(node.where, "grants", "must be a mapping of grant ids to grants")
            return
        grants: dict[str, GrantConfig] = {}
        for gid, gnode in node.value.items():
            sub = Fields(gnode, f"grants.{gid}", self.problems)
            if not sub.ok:
                continue
            sub.check_known({"key_sha256", "agent", "roles", "attrs"})
            digest = self._digest(sub, "key_sha256")
            attrs = sub.get("attrs")
            if attrs is not None and not isinstance(attrs.value, dict):
                self.err(attrs.where, f"grants.{gid}.attrs", "must be a mapping")
            grants[gid] = GrantConfig(
                id=gid,
                key_sha256=digest or "",
                agent=sub.string("agent") or gid,
                roles=tuple(self._str_list(sub, "roles")),
                attrs=attrs.plain() if attrs is not None and isinstance(attrs.value, dict) else {},
            )
        self.out["grants"] = grants

    def _digest(self, sub: Fields, name: str) -> str | None:
        value = sub.string(name, required=True)
        if value is not None and not _HEX64.match(value):
            self.err(sub.where(name), f"{sub.path}.{name}", "must be 64 lowercase hex characters")
            return None
        return value

    def _admin(self, top: Fields) -> None:
        sub = self._sub(top, "admin", {"token_sha256", "metrics_public"})
        if sub is not None:
            self.out["admin_token_sha256"] = self._digest(sub, "token_sha256")
            self.out["metrics_public"] = sub.boolean("metrics_public", False)

    def _approvals(self, top: Fields) -> None:
        sub = self._sub(top, "approvals", {"max_pending_per_grant", "max_pending"})
        if sub is not None:
            per_grant, out = "max_pending_per_grant", "approvals_max_pending_per_grant"
            self._whole(sub, per_grant, 1, 100_000, "requests", out)
            self._whole(sub, "max_pending", 1, 1_000_000, "requests", "approvals_max_pending")

    def _audit(self, top: Fields) -> None:
        sub = self._sub(top, "audit", {"log_arguments"})
        if sub is not None:
            self.out["log_arguments"] = sub.boolean("log_arguments", False)

    def _security(self, top: Fields) -> None:
        known = {"allowed_hosts", "allowed_origins", "max_body_bytes", *_CONNECTION_LIMITS}
        sub = self._sub(top, "security", known)
        if sub is None:
            return
        self.out["security"] = SecurityConfig(
            allowed_hosts=tuple(self._str_list(sub, "allowed_hosts")),
            allowed_origins=tuple(self._str_list(sub, "allowed_origins")),
            max_body_bytes=sub.positive_int("max_body_bytes") or 4 * 1024 * 1024,
            **self._connection_limits(sub),
        )

    def _connection_limits(self, sub: Fields) -> dict[str, Any]:
        """The ``security`` limits given (file:line if not positive); the rest keep defaults."""
        out: dict[str, Any] = {}
        for name, whole in _CONNECTION_LIMITS.items():
            value = sub.positive_int(name) if whole else sub.positive_number(name)
            if value is not None:
                out[name] = value
        return out

    def _sessions(self, top: Fields) -> None:
        sub = self._sub(top, "sessions", {"secret"})
        if sub is not None:
            secret = sub.string("secret")
            if secret is not None and len(secret) < 16:
                self.err(sub.where("secret"), "sessions.secret", "use at least 16 characters")
            self.out["session_secret"] = secret

    def _pins(self, top: Fields) -> None:
        sub = self._sub(top, "pins", {"file", "accept_changes"})
        if sub is None:
            return
        file = sub.string("file")
        self.out["pins_file"] = self._path(file) if file else None
        self.out["accept_tool_changes"] = sub.boolean("accept_changes", False)

    def _anonymous(self, top: Fields) -> None:
        """Keyless callers only by explicit choice, and only on loopback."""
        anonymous = top.boolean("anonymous", False)
        self.out["anonymous"] = anonymous
        host = self.out.get("host", "127.0.0.1")
        if anonymous and host not in LOOPBACK_HOSTS:
            msg = f"anonymous access is for local use: listen on loopback, not {host}"
            self.err(top.where("anonymous"), "anonymous", msg)
        no_grants = not self.out.get("grants") and "grants" not in top.node.value
        if not anonymous and no_grants and "oauth" not in top.node.value:
            msg = "no grants: give agents keys (`celgate keys new`), or `anonymous: true` locally"
            self.err(top.node.where, "grants", msg)

    def _relay(self, top: Fields) -> None:
        """Request methods the relay does not know are refused unless named here."""
        sub = self._sub(top, "relay", {"extra_methods"})
        if sub is None:
            return
        methods = self._str_list(sub, "extra_methods")
        for method in methods:
            if not method or method.startswith("notifications/") or method != method.strip():
                msg = f"{method!r} is not a request method name"
                self.err(sub.where("extra_methods"), "relay.extra_methods", msg)
        self.out["relay_extra_methods"] = frozenset(methods)

    def _oauth(self, top: Fields) -> None:
        node = top.get("oauth")
        if node is not None:
            servers = set(self.out.get("servers", {}))
            self.out["oauth"] = parse_oauth(node, servers, self.problems)

    def _cel(self, top: Fields) -> None:
        sub = self._sub(top, "cel", {"engine"})
        if sub is not None:
            self.out["cel_engine"] = sub.choice("engine", _cel_engines(), "cel-python")

    def _aggregate(self, top: Fields) -> None:
        known = {"separator", "max_sessions_per_grant", "max_sessions", "idle_timeout"}
        sub = self._sub(top, "aggregate", known)
        if sub is None:
            return
        self.out["aggregate_separator"] = sub.string("separator") or "__"
        per_grant = "max_sessions_per_grant"
        self._whole(sub, per_grant, 1, 1_000_000, "sessions", "aggregate_" + per_grant)
        self._whole(sub, "max_sessions", 1, 10_000_000, "sessions", "aggregate_max_sessions")
        idle = sub.positive_number("idle_timeout")
        if idle is not None:
            self.out["aggregate_idle_timeout"] = idle


def _cel_engines() -> tuple[str, ...]:
    from gateway.policy.engines import ENGINES

    return ENGINES


def load_config(path: str | Path, env: dict[str, str] | None = None) -> GatewayConfig:
    """Load and validate a gateway config; raise ``ConfigError`` with every problem."""
    file = Path(path)
    display = str(path)
    problems: list[Problem] = []
    if not file.is_file():
        raise ConfigError([Problem(SourceLocation(display, 1), "", "no such config file")])
    root = parse_file(file, problems, display)
    if root is None:
        raise ConfigError(problems)
    _expand(root, dict(os.environ) if env is None else env, problems)
    loader = _ConfigLoader(file.resolve(), display)
    loader.problems = problems
    loader.load(root)
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(**loader.out)
