"""``servers:``: each upstream, Streamable HTTP (``url``) or stdio (``command``), and the name
prefixes they take on the aggregate ``/mcp``."""

from __future__ import annotations

import re
import ssl
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.read import Reader, build
from gateway.config.sections import ServerConfig
from gateway.located import Node
from gateway.policy.schema import Fields

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_HTTP_SERVER = {
    "url",
    "headers",
    "timeout",
    "ca_file",
    "prefix",
    "max_sessions",
    "max_sessions_per_grant",
    "session_idle",
    "session_give_way",
}
_STDIO_SERVER = {
    "command",
    "args",
    "env",
    "cwd",
    "max_processes",
    "max_processes_per_grant",
    "idle_timeout",
    "timeout",
    "prefix",
}
# A tool or prompt name prefix on /mcp (``<prefix><sep><name>``); empty: names as they are.
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,64}\Z")


def read_servers(read: Reader, top: Fields) -> dict[str, ServerConfig] | None:
    """Every server that could be read; None (a problem noted) if the section is unusable."""
    node = top.get("servers")
    if node is None:
        read.err(top.node.where, "servers", "missing (at least one upstream MCP server)")
        return None
    if not isinstance(node.value, dict) or not node.value:
        read.err(node.where, "servers", "must be a mapping of names to servers")
        return None
    servers: dict[str, ServerConfig] = {}
    prefixes: dict[str, str] = {}
    for name, sub_node in node.value.items():
        server = _server(read, name, sub_node)
        if server is not None:
            servers[name] = _prefixed(read, server, sub_node, prefixes)
    return servers


def _server(read: Reader, name: str, node: Node) -> ServerConfig | None:
    path = f"servers.{name}"
    if not _SERVER_NAME.match(name):
        read.err(node.where, path, "a server name is letters, digits, '_', '-' or '.'")
    sub = Fields(node, path, read.problems)
    if not sub.ok:
        return None
    is_stdio = sub.get("command") is not None
    if is_stdio == (sub.get("url") is not None):
        read.err(node.where, path, "give either `url` (Streamable HTTP) or `command` (stdio)")
        return None
    sub.check_known(_STDIO_SERVER if is_stdio else _HTTP_SERVER)
    return _stdio_server(read, name, sub) if is_stdio else _http_server(read, name, sub)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an upstream's (read as the relay's client will read it)."""
    if not url.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not one, or out of range
    except ValueError:  # its words quote the port, which may be a password cut short
        return "is not a URL the gateway can reach (a port that is no number, or out of range)"
    if not parts.hostname:
        return "names no host"
    if port == 0:
        return "port 0 is no port"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials: give them in headers (Authorization: ...)"
    return None


def _http_server(read: Reader, name: str, sub: Fields) -> ServerConfig:
    url = sub.string("url") or ""
    problem = url_problem(url)
    if problem is not None:
        read.err(sub.where("url"), f"{sub.path}.url", problem)
    ca_file = sub.string("ca_file")
    ca_path: str | None = None
    if ca_file:
        ca_path = str(read.path(ca_file))
        if not url.startswith("https://"):
            read.err(sub.where("ca_file"), f"{sub.path}.ca_file", "only applies to https:// URLs")
        elif not Path(ca_path).is_file():
            read.err(sub.where("ca_file"), f"{sub.path}.ca_file", f"{ca_file}: no such file")
        else:
            try:  # read now, as the relay will: a file of no certificate failed at start
                ssl.create_default_context(cafile=ca_path)
            except (ssl.SSLError, OSError) as exc:
                why = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                msg = f"{ca_file}: no PEM CA certificate could be read ({why})"
                read.err(sub.where("ca_file"), f"{sub.path}.ca_file", msg)
    return build(
        ServerConfig,
        name=name,
        url=url,
        headers=read.str_map(sub, "headers"),
        timeout=sub.positive_number("timeout"),
        ca_file=ca_path,
        max_sessions=sub.positive_int("max_sessions"),
        max_sessions_per_grant=sub.positive_int("max_sessions_per_grant"),
        session_idle=sub.positive_number("session_idle"),
        session_give_way=sub.positive_number("session_give_way"),
    )


def _stdio_server(read: Reader, name: str, sub: Fields) -> ServerConfig:
    cwd = sub.string("cwd")
    return build(
        ServerConfig,
        name=name,
        command=sub.string("command"),
        args=read.str_list(sub, "args"),
        env=read.str_map(sub, "env"),
        cwd=str(read.path(cwd)) if cwd else None,
        max_processes=sub.positive_int("max_processes"),
        max_processes_per_grant=sub.positive_int("max_processes_per_grant"),
        idle_timeout=sub.positive_number("idle_timeout"),
        timeout=sub.positive_number("timeout"),  # an answer's deadline
    )


def _prefixed(read: Reader, server: ServerConfig, node: Node, seen: dict[str, str]) -> ServerConfig:
    """``prefix:``: a name prefix no other server uses (an empty one may be shared; the
    aggregate refuses names that then collide when it builds its catalogue)."""
    path = f"servers.{server.name}.prefix"
    prefix_node = node.value.get("prefix") if isinstance(node.value, dict) else None
    prefix = server.name
    if prefix_node is not None:
        if not isinstance(prefix_node.value, str) or not _PREFIX.match(prefix_node.value):
            msg = "a prefix is up to 64 letters, digits, '_', '-' or '.' (or empty)"
            read.err(prefix_node.where, path, msg)
            return server
        prefix = prefix_node.value
        server = replace(server, prefix=prefix)
    where = prefix_node.where if prefix_node is not None else node.where
    if prefix and prefix in seen:
        read.err(where, path, f"prefix {prefix!r} is also servers.{seen[prefix]}'s")
    seen.setdefault(prefix, server.name)
    return server


def check_prefix_overlap(
    read: Reader, top: Fields, servers: dict[str, ServerConfig], sep: str
) -> None:
    """On ``/mcp`` a name goes to the server whose prefix and separator it starts with: when
    one server's ``<prefix><sep>`` begins another's (``a`` and ``a__b``), a tool ``b__c`` of
    the first would show as ``a__b__c`` and be routed to the second. Refused at load."""
    node = top.get("servers")
    if node is None or not isinstance(node.value, dict):
        return
    heads = {n: s.name_prefix + sep for n, s in servers.items() if s.name_prefix}
    for name, head in heads.items():
        for other, other_head in heads.items():
            if other != name and other_head.startswith(head):
                sub = node.value.get(other)
                where = sub.where if sub is not None else node.where
                msg = (
                    f"prefix {servers[other].name_prefix!r} begins with servers.{name}'s prefix "
                    f"and the separator {sep!r}: names on /mcp would be ambiguous"
                )
                read.err(where, f"servers.{other}.prefix", msg)
