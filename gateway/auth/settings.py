"""The ``oauth:`` section of the gateway config (celgate as an OAuth 2.1 protected resource),
and ``GrantConfig``, the type of one entry of ``grants:`` (a key and its agent).

Validated like the rest of the config (every problem with its ``file:line``): the issuer and
the resource URL are https outside loopback, the algorithms are asymmetric ones only, and every
claim mapping names a claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import Problem
from gateway.located import Node
from gateway.policy.schema import Fields

#: Signature algorithms a token may use. No ``none`` and no HMAC: a JWKS holds public keys,
#: and a gateway that accepted HS256 could be fed a token "signed" with the public key.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_KNOWN = {
    "resource",
    "issuer",
    "audience",
    "jwks_uri",
    "algorithms",
    "leeway",
    "scopes",
    "server_scopes",
    "claims",
    "jwks_cooldown",
    "jwks_max_age",
    "introspection",
    "resource_name",
}
_CLAIMS = {"grant", "agent", "roles", "attrs"}


@dataclass(frozen=True, slots=True)
class ClaimMap:
    """Which claims become the grant id, the agent id, the roles and the attrs."""

    grant: str = "sub"
    agent: str = "sub"
    roles: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    """RFC 7662 introspection for opaque tokens: the endpoint and this resource's credentials."""

    client_id: str
    client_secret: str
    endpoint: str | None = None  # None: ``introspection_endpoint`` of the issuer's metadata
    max_cache: float = 300.0  # seconds an answer is kept at most (never past the token's exp)


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """How tokens from an identity provider are accepted (docs/oauth.md)."""

    resource: str  # the gateway's public base URL; endpoints are <resource>/mcp[/<server>]
    issuer: str
    audience: tuple[str, ...] = ()  # more accepted ``aud`` values (an IdP's API identifier)
    jwks_uri: str | None = None  # None: from the issuer's metadata
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: int = 30
    scopes: tuple[str, ...] = ()
    server_scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    claims: ClaimMap = field(default_factory=ClaimMap)
    jwks_cooldown: float = 30.0  # seconds between refetches caused by an unknown ``kid``
    jwks_max_age: float = 3600.0  # a key set older than this is refreshed in the background
    introspection: IntrospectionConfig | None = None
    resource_name: str = "celgate"


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK


class _Reader:
    def __init__(self, sub: Fields, servers: set[str]) -> None:
        self.sub = sub
        self.servers = servers
        self.problems = sub.problems

    def err(self, node: Node, name: str, message: str) -> None:
        self.problems.append(Problem(node.where, name, message))

    def url(self, name: str, *, required: bool, what: str, strip: bool = True) -> str | None:
        sub = self.sub
        node = sub.get(name)
        if node is None:
            if required:
                self.problems.append(Problem(sub.node.where, f"oauth.{name}", f"missing: {what}"))
            return None
        value = node.value
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.err(node, f"oauth.{name}", "must be an http(s) URL")
            return None
        if parts.query or parts.fragment:
            self.err(node, f"oauth.{name}", "must not have a query or a fragment")
            return None
        if parts.scheme != "https" and not is_loopback(value):
            msg = f"must be https outside loopback (http only for 127.0.0.1/localhost): {value}"
            self.err(node, f"oauth.{name}", msg)
            return None
        return str(value).rstrip("/") if strip else str(value)

    def strings(self, name: str, node: Node | None = None) -> tuple[str, ...]:
        node = node if node is not None else self.sub.get(name)
        if node is None:
            return ()
        raw = node.value if isinstance(node.value, list) else [node]
        out = []
        for item in raw:
            if not isinstance(item.value, str) or not item.value.strip() or " " in item.value:
                self.err(item, f"oauth.{name}", "must be a list of non-empty words")
                continue
            out.append(item.value)
        return tuple(out)

    def algorithms(self) -> tuple[str, ...]:
        node = self.sub.get("algorithms")
        if node is None:
            return DEFAULT_ALGORITHMS
        algs = self.strings("algorithms")
        bad = [a for a in algs if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            allowed = ", ".join(ASYMMETRIC_ALGORITHMS)
            msg = f"{', '.join(bad)} refused: only asymmetric signatures ({allowed})"
            self.err(node, "oauth.algorithms", msg)
        if not algs:
            self.err(node, "oauth.algorithms", "must name at least one algorithm")
        return tuple(a for a in algs if a in ASYMMETRIC_ALGORITHMS)

    def server_scopes(self) -> dict[str, tuple[str, ...]]:
        node = self.sub.get("server_scopes")
        if node is None:
            return {}
        if not isinstance(node.value, dict):
            self.err(node, "oauth.server_scopes", "must map server names to lists of scopes")
            return {}
        out = {}
        for name, item in node.value.items():
            if name not in self.servers:
                self.err(item, f"oauth.server_scopes.{name}", "names no configured server")
            out[name] = self.strings(f"server_scopes.{name}", item)
        return out

    def claims(self) -> ClaimMap:
        node = self.sub.get("claims")
        if node is None:
            return ClaimMap()
        sub = Fields(node, "oauth.claims", self.problems)
        if not sub.ok:
            return ClaimMap()
        sub.check_known(_CLAIMS)
        grant = self.claim_name(sub, "grant")
        agent = self.claim_name(sub, "agent")
        attrs_node = sub.get("attrs")
        attrs: dict[str, str] = {}
        if attrs_node is not None and not isinstance(attrs_node.value, dict):
            self.err(attrs_node, "oauth.claims.attrs", "must map attribute names to claims")
        elif attrs_node is not None:
            attr_fields = Fields(attrs_node, "oauth.claims.attrs", self.problems)
            for attr in attrs_node.value:
                claim = self.claim_name(attr_fields, attr)
                if claim is not None:
                    attrs[attr] = claim
        roles = self.claim_name(sub, "roles")
        return ClaimMap(**_given(grant=grant, agent=agent, roles=roles, attrs=attrs))

    def claim_name(self, sub: Fields, name: str) -> str | None:
        """A claim name, or a dotted path into nested claims (``realm_access.roles``)."""
        node = sub.get(name)
        if node is None:
            return None
        value = node.value
        if not isinstance(value, str) or not value.strip() or "" in value.split("."):
            msg = f"must name a claim (a name or a dotted path), not {value!r}"
            self.err(node, f"{sub.path}.{name}", msg)
            return None
        return value

    def seconds(self, name: str, low: float, high: float) -> float | None:
        node = self.sub.get(name)
        if node is None:
            return None
        value = node.value
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.err(node, f"oauth.{name}", f"must be a number of seconds from {low:g} to {high:g}")
            return None
        return float(value)

    def introspection(self) -> IntrospectionConfig | None:
        node = self.sub.get("introspection")
        if node is None:
            return None
        sub = Fields(node, "oauth.introspection", self.problems)
        if not sub.ok:
            return None
        sub.check_known({"endpoint", "client_id", "client_secret", "max_cache"})
        endpoint = _Reader(sub, self.servers).url("endpoint", required=False, what="")
        client_id = sub.string("client_id", required=True)
        secret = sub.string("client_secret", required=True)
        max_cache = sub.positive_number("max_cache")
        if client_id is None or secret is None:
            return None
        given = _given(endpoint=endpoint, max_cache=max_cache)
        return IntrospectionConfig(client_id, secret, **given)


def parse_oauth(node: Node, servers: set[str], problems: list[Problem]) -> OAuthConfig | None:
    """The ``oauth`` section as an OAuthConfig; problems are appended (None if unusable)."""
    sub = Fields(node, "oauth", problems)
    if not sub.ok:
        return None
    sub.check_known(_KNOWN)
    read = _Reader(sub, servers)
    what = "the gateway's public base URL; tokens must carry it (or an endpoint's URL) as aud"
    resource = read.url("resource", required=True, what=what)
    # The issuer is compared with ``iss`` exactly as written: a trailing slash is part of it.
    what_iss = "the authorization server's issuer URL"
    issuer = read.url("issuer", required=True, what=what_iss, strip=False)
    jwks_uri = read.url("jwks_uri", required=False, what="")
    leeway = read.seconds("leeway", 0, 300)
    kwargs = _given(
        audience=read.strings("audience"),
        jwks_uri=jwks_uri,
        algorithms=read.algorithms(),
        leeway=int(leeway) if leeway is not None else None,
        scopes=read.strings("scopes"),
        server_scopes=read.server_scopes(),
        claims=read.claims(),
        jwks_cooldown=read.seconds("jwks_cooldown", 0, 3600),
        jwks_max_age=read.seconds("jwks_max_age", 60, 86400 * 7),
        introspection=read.introspection(),
        resource_name=sub.string("resource_name"),
    )
    if resource is None or issuer is None:
        return None
    return OAuthConfig(resource=resource, issuer=issuer, **kwargs)


def _given(**fields: Any) -> dict[str, Any]:
    """The fields the file gives; a None (absent, or a problem noted) keeps the dataclass's
    default, which is stated there alone."""
    return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class GrantConfig:
    """Who may connect: a hashed key and what CEL sees as ``agent``."""

    id: str
    key_sha256: str
    agent: str
    roles: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    #: The servers this key may reach (``/mcp/<name>``; ``/mcp`` only when it names them
    #: all); None: every server.
    servers: tuple[str, ...] | None = None
