"""``load_config``: the file read with positions, ``${VAR}`` expanded, every section validated,
and one ``ConfigError`` listing every problem in the order the sections are read."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.settings import GrantConfig, parse_oauth
from gateway.config.model import GatewayConfig
from gateway.config.read import Reader, build
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
    SessionsConfig,
)
from gateway.config.servers import check_prefix_overlap, read_servers
from gateway.errors import ConfigError, Problem, SourceLocation
from gateway.located import Node, parse_file
from gateway.policy.schema import Fields

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:{}-]{1,64}\Z")
_KEY_PARTS = ("rl:", "ap:", "cs:")
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
# security: the fields bounding client connections, and whether each is a whole number
_CONNECTION_LIMITS = {
    "max_head_bytes": True,
    "max_headers": True,
    "head_timeout": False,
    "body_timeout": False,
    "keepalive_timeout": False,
    "max_connections": True,
    "send_timeout": False,
    "max_unsent_bytes": True,
    "max_bodies_bytes": True,
}


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
    unset = list(problems)  # parsed whole: only variables that are not set so far
    loader = _ConfigLoader(file.resolve().parent, problems)
    loader.load(root)
    if problems:
        # A value with a variable that is not set is that problem, not also an empty value.
        where = {p.where for p in unset}
        shown = [p for p in problems if p in unset or p.where not in where]
        raise ConfigError(shown + _policy_problems(loader.out.get("policy")))
    return GatewayConfig(source=display, **loader.out)


def _policy_problems(paths: tuple[Path, ...] | None) -> list[Problem]:
    """The rule files' problems, told with the config's: an operator mending the config
    learned of the rules' only once it was clean (red-team wave 37)."""
    if not paths or not all(path.exists() for path in paths):
        return []
    from gateway.policy import load_policy

    try:
        load_policy([str(path) for path in paths])
    except ConfigError as exc:
        return list(exc.problems)
    return []


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


class _ConfigLoader(Reader):
    """Reads each section into ``out``: the GatewayConfig fields the file gives."""

    def __init__(self, base: Path, problems: list[Problem]) -> None:
        super().__init__(base, problems)
        self.out: dict[str, Any] = {}

    def load(self, root: Node) -> None:
        top = Fields(root, "", self.problems)
        if not top.ok:
            return
        top.check_known(_TOP)
        self._listen(top)
        self._policy(top)
        self.out["servers"] = read_servers(self, top)
        self._limits(top)
        self._grants(top)
        self._admin(top)
        self._approvals(top)
        self._audit(top)
        self._security(top)
        self._sessions(top)
        self._pins(top)
        self._aggregate(top)
        if self.out["servers"]:
            aggregate = self.out.get("aggregate") or AggregateConfig()
            check_prefix_overlap(self, top, self.out["servers"], aggregate.separator)
        self._cel(top)
        self._oauth(top)
        self._anonymous(top)
        self._relay(top)
        self.out = {name: value for name, value in self.out.items() if value is not None}

    def _listen(self, top: Fields) -> None:
        sub = self.section(top, "listen", ListenConfig)
        if sub is None:
            return
        host = sub.string("host")
        proxies = self.str_list(sub, "trusted_proxies")
        for proxy in proxies or ():
            # As uvicorn, which applies the list, reads it: what it cannot read it keeps as
            # text that matches no peer, and every caller would be seen as the proxy.
            try:
                if "/" in proxy:
                    ipaddress.ip_network(proxy)
                else:
                    ipaddress.ip_address(proxy)
            except ValueError:
                try:
                    network = ipaddress.ip_network(proxy, strict=False)
                except ValueError:
                    msg = f"{proxy!r} is not an IP address or network"
                else:
                    msg = f"{proxy!r} has host bits set: write {network} or the address alone"
                self.err(sub.where("trusted_proxies"), "listen.trusted_proxies", msg)
        port = sub.positive_int("port")
        if port is not None and port > 65535:
            self.err(sub.where("port"), "listen.port", f"{port} is not a TCP port")
        listen = build(ListenConfig, host=host, port=port, trusted_proxies=proxies)
        self.out["listen"] = listen

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
            path = self.path(item_node.value)
            if not path.exists():
                self.err(item_node.where, "policy", f"{item_node.value}: no such file or folder")
            paths.append(path)
        self.out["policy"] = tuple(paths)

    def _limits(self, top: Fields) -> None:
        sub = self.section(top, "limits", LimitsConfig, removed=_REMOVED_LIMITS)
        if sub is None:
            return
        backend = sub.string("backend")
        problem = _backend_problem(backend) if backend is not None else None
        if problem:
            self.err(sub.where("backend"), "limits.backend", problem)
        elif backend is not None and _weak_password(backend):
            # deploy/example.env's, left as it was: Valkey holds approvals and sign-ins
            self.err(sub.where("backend"), "limits.backend", "the password is " + _PLACEHOLDER)
        self.out["limits"] = build(
            LimitsConfig,
            backend=backend,
            timeout_ms=self.whole(sub, "timeout_ms", 10, 10_000, "milliseconds"),
            key_prefix=self._key_prefix(sub),
        )

    def _key_prefix(self, sub: Fields) -> str | None:
        """``limits.key_prefix``, which every Valkey key of this deployment begins with."""
        node = sub.get("key_prefix")
        if node is None:
            return None
        value = node.value
        if isinstance(value, str) and _KEY_PREFIX.fullmatch(value):
            # "prod:" scans prod:rl:*, which holds the keys of "prod:rl:" too: no prefix may
            # hold a part its keys are made of, so no deployment's keys fall in another's.
            if not any(part in value for part in _KEY_PARTS):
                return value
            msg = "must not hold rl:, ap: or cs: (the parts celgate's keys are made of)"
            self.err(node.where, "limits.key_prefix", msg)
            return None
        msg = "must be 1 to 64 letters, digits or _ . : - { } (no spaces or globs)"
        self.err(node.where, "limits.key_prefix", msg)
        return None

    def _grants(self, top: Fields) -> None:
        node = top.get("grants")
        if node is None:
            return
        if not isinstance(node.value, dict):
            self.err(node.where, "grants", "must be a mapping of grant ids to grants")
            return
        grants: dict[str, GrantConfig] = {}
        by_digest: dict[str, tuple[str, SourceLocation]] = {}
        for gid, gnode in node.value.items():
            sub = Fields(gnode, f"grants.{gid}", self.problems)
            if not sub.ok:
                continue
            grants[gid] = grant = self._grant(gid, sub)
            where = sub.where("key_sha256")
            first = by_digest.setdefault(grant.key_sha256, (gid, where))
            if grant.key_sha256 and first[0] != gid:
                # One key read as two grants: the one written last won, silently, and a key
                # meant to reach some servers (or to hold some roles) reached all of them.
                other, line = first[0], first[1].line
                msg = f"the same key as grants.{other} (line {line}): one key, one grant"
                self.err(where, f"grants.{gid}.key_sha256", msg)
        self.out["grants"] = grants

    def _grant(self, gid: str, sub: Fields) -> GrantConfig:
        sub.check_known({"key_sha256", "agent", "roles", "attrs", "servers"})
        digest = self.digest(sub, "key_sha256")
        attrs = sub.get("attrs")
        if attrs is not None and not isinstance(attrs.value, dict):
            self.err(attrs.where, f"grants.{gid}.attrs", "must be a mapping")
        reach = self.str_list(sub, "servers")
        known = self.out.get("servers") or {}
        unknown = sorted(set(reach or ()) - set(known))
        if known and unknown:  # (no usable servers section: that problem is noted already)
            msg = f"names no configured server: {', '.join(unknown)}"
            self.err(sub.where("servers"), f"grants.{gid}.servers", msg)
        elif reach == ():
            msg = "names no server: leave it out to reach every server"
            self.err(sub.where("servers"), f"grants.{gid}.servers", msg)
        return build(
            GrantConfig,
            id=gid,
            key_sha256=digest or "",  # only when a problem is noted: never served
            agent=sub.string("agent") or gid,
            roles=self.str_list(sub, "roles"),
            attrs=attrs.plain() if attrs is not None and isinstance(attrs.value, dict) else None,
            servers=reach,
        )

    def _admin(self, top: Fields) -> None:
        sub = self.section(top, "admin", AdminConfig)
        if sub is not None:
            token = self.digest(sub, "token_sha256")
            keys = {grant.key_sha256 for grant in (self.out.get("grants") or {}).values()}
            if token is not None and token in keys:  # the operator's credential is its own
                msg = "is an agent's key (a grant's key_sha256): the admin token must be its own"
                self.err(sub.where("token_sha256"), "admin.token_sha256", msg)
            metrics_public = self.flag(sub, "metrics_public")
            self.out["admin"] = build(
                AdminConfig, token_sha256=token, metrics_public=metrics_public
            )

    def _approvals(self, top: Fields) -> None:
        sub = self.section(top, "approvals", ApprovalsConfig)
        if sub is not None:
            self.out["approvals"] = build(
                ApprovalsConfig,
                max_pending_per_grant=self.whole(
                    sub, "max_pending_per_grant", 1, 100_000, "requests"
                ),
                max_pending=self.whole(sub, "max_pending", 1, 1_000_000, "requests"),
            )

    def _audit(self, top: Fields) -> None:
        sub = self.section(top, "audit", AuditConfig)
        if sub is not None:
            self.out["audit"] = build(AuditConfig, log_arguments=self.flag(sub, "log_arguments"))

    def _security(self, top: Fields) -> None:
        sub = self.section(top, "security", SecurityConfig)
        if sub is None:
            return
        self.out["security"] = build(
            SecurityConfig,
            allowed_hosts=self.str_list(sub, "allowed_hosts"),
            allowed_origins=self.str_list(sub, "allowed_origins"),
            max_body_bytes=sub.positive_int("max_body_bytes"),
            max_requests_per_agent=sub.positive_int("max_requests_per_agent"),
            **{
                name: sub.positive_int(name) if whole else sub.positive_number(name)
                for name, whole in _CONNECTION_LIMITS.items()
            },
        )
        built = self.out["security"]
        if built is not None and built.max_bodies_bytes < 16 * built.max_body_bytes:
            # one agent's share (a quarter) must hold one body at four times its bytes
            msg = f"at least 16 times max_body_bytes ({16 * built.max_body_bytes})"
            self.err(sub.where("max_bodies_bytes"), "security.max_bodies_bytes", msg)

    def _sessions(self, top: Fields) -> None:
        sub = self.section(top, "sessions", SessionsConfig)
        if sub is not None:
            secret = sub.string("secret")
            if secret is not None and len(secret) < 16:
                self.err(sub.where("secret"), "sessions.secret", "use at least 16 characters")
            elif secret is not None and _placeholder(secret):
                # deploy/example.env's placeholder, or the like: every MAC would be public
                self.err(sub.where("secret"), "sessions.secret", _PLACEHOLDER)
            self.out["sessions"] = build(SessionsConfig, secret=secret)

    def _pins(self, top: Fields) -> None:
        sub = self.section(top, "pins", PinsConfig)
        if sub is not None:
            file = sub.string("file")
            self.out["pins"] = build(
                PinsConfig,
                file=self.path(file) if file else None,
                accept_changes=self.flag(sub, "accept_changes"),
            )

    def _aggregate(self, top: Fields) -> None:
        sub = self.section(top, "aggregate", AggregateConfig)
        if sub is not None:
            self.out["aggregate"] = build(
                AggregateConfig,
                separator=sub.string("separator"),
                max_sessions_per_grant=self.whole(
                    sub, "max_sessions_per_grant", 1, 1_000_000, "sessions"
                ),
                max_sessions=self.whole(sub, "max_sessions", 1, 10_000_000, "sessions"),
                idle_timeout=sub.positive_number("idle_timeout"),
                give_way=sub.positive_number("give_way"),
            )

    def _cel(self, top: Fields) -> None:
        sub = self.section(top, "cel", CelConfig)
        if sub is not None:
            self.out["cel"] = build(CelConfig, engine=sub.choice("engine", _cel_engines(), None))

    def _oauth(self, top: Fields) -> None:
        node = top.get("oauth")
        if node is not None:
            servers = set(self.out.get("servers") or ())
            self.out["oauth"] = parse_oauth(node, servers, self.problems)

    def _anonymous(self, top: Fields) -> None:
        """Keyless callers only by explicit choice, and only on loopback."""
        anonymous = self.flag(top, "anonymous")
        self.out["anonymous"] = anonymous
        host = self.out.get("listen", ListenConfig()).host
        if anonymous and host not in LOOPBACK_HOSTS:
            msg = f"anonymous access is for local use: listen on loopback, not {host}"
            self.err(top.where("anonymous"), "anonymous", msg)
        elif anonymous and self.out.get("listen", ListenConfig()).trusted_proxies:
            msg = "anonymous access is for local use: not behind a proxy (listen.trusted_proxies)"
            self.err(top.where("anonymous"), "anonymous", msg)
        no_grants = not self.out.get("grants") and "grants" not in top.node.value
        if not anonymous and no_grants and "oauth" not in top.node.value:
            msg = "no grants: give agents keys (`celgate keys new`), or `anonymous: true` locally"
            self.err(top.node.where, "grants", msg)

    def _relay(self, top: Fields) -> None:
        """Client methods the relay does not know (requests, and notices under
        ``notifications/``) are refused unless named here, and server methods MCP does not
        define are dropped unless named here."""
        sub = self.section(top, "relay", RelayConfig)
        if sub is None:
            return
        methods = self.str_list(sub, "extra_methods")
        for method in methods or ():
            if not method or method != method.strip() or method.endswith("/"):
                msg = f"{method!r} is not a method name"
                self.err(sub.where("extra_methods"), "relay.extra_methods", msg)
        extra = frozenset(methods) if methods is not None else None
        server = self.str_list(sub, "extra_server_methods")
        for method in server or ():
            if not method or method != method.strip() or method.endswith("/"):
                msg = f"{method!r} is not a method name"
                self.err(sub.where("extra_server_methods"), "relay.extra_server_methods", msg)
        from_server = frozenset(server) if server is not None else None
        self.out["relay"] = build(
            RelayConfig, extra_methods=extra, extra_server_methods=from_server
        )


_REMOVED_LIMITS = {
    "busy_poll_us": "no longer a setting: the Valkey client does not poll for replies "
    "(issue 19); delete this line"
}


_PLACEHOLDER = 'a placeholder: make one with python -c "import secrets; '
_PLACEHOLDER += 'print(secrets.token_urlsafe(32))"'


def _placeholder(secret: str) -> bool:
    """A secret left as an example gave it (``change-me``), or one of few characters."""
    return "change-me" in secret.lower() or len(set(secret)) < 8


def _weak_password(url: str) -> bool:
    """Whether a backend URL's password (if it has one) is a placeholder."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return False
    return password is not None and _placeholder(password)


def _backend_problem(url: str) -> str | None:
    # imported here: the Valkey client is only loaded for a config that names a backend
    from gateway.ratelimit.factory import backend_problem

    return backend_problem(url)


def _cel_engines() -> tuple[str, ...]:
    from gateway.policy.engines import ENGINES

    return ENGINES
