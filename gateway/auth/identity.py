"""Who is calling: ``Authorization: Bearer <key or token>`` resolved to a grant.

Keys are never stored: the config holds their sha256, and a presented key is hashed and
looked up by digest (the lookup compares digests, so its timing says nothing about keys).
With an ``oauth:`` section, a credential that is no configured key is checked as an access
token from the identity provider (gateway.auth); keys keep working beside tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from gateway.auth.agent import Agent
from gateway.auth.http import IssuerHttp
from gateway.auth.resource import AGGREGATE, challenge
from gateway.auth.settings import GrantConfig, OAuthConfig
from gateway.auth.tokens import Refusal, TokenAuthority
from gateway.policy.model import Identity

KEY_PREFIX = "cgk_"
#: What celgate's own secrets begin with: agent keys and admin tokens (``celgate keys new``,
#: ``celgate admin-token new``).
OWN_PREFIXES = (KEY_PREFIX, "cga_")
#: What a 401 says about how to authenticate: agents on the MCP endpoints, operators on admin.
AGENT_CHALLENGE = 'Bearer realm="celgate", error="invalid_token"'
ADMIN_CHALLENGE = 'Bearer realm="celgate-admin"'
ANONYMOUS_LOCAL = Agent(
    grant="anonymous", agent="anonymous", roles=("anonymous",), auth="anonymous"
)


#: An admin token as ``celgate admin-token new`` makes it: its prefix and 256 random bits.
_GENERATED_ADMIN_TOKEN = re.compile(r"cga_[A-Za-z0-9_-]{43}")


def generated_admin_token(token: str | None) -> bool:
    """Whether ``token`` has the form of one ``celgate admin-token new`` makes: no one
    guesses such a token, so a throttle of wrong guesses need not keep it out."""
    return token is not None and _GENERATED_ADMIN_TOKEN.fullmatch(token) is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its sha256 digest (the key is shown once, never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Maps a presented key (or, with ``oauth``, a token) to an Identity; ``anonymous`` lets
    keyless callers in."""

    by_digest: Mapping[str, Identity]
    anonymous: bool = False
    oauth: TokenAuthority | None = None
    http: IssuerHttp | None = None
    #: The endpoints a key with ``servers`` may use, by grant: ``/mcp/<name>`` for each
    #: server it names, and ``/mcp`` too when it names every server.
    reach: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_grants(
        cls,
        grants: Mapping[str, GrantConfig],
        anonymous: bool,
        oauth: TokenAuthority | None = None,
        http: IssuerHttp | None = None,
        servers: Collection[str] = (),
    ) -> Authenticator:
        table: dict[str, Identity] = {
            g.key_sha256: Agent(grant=g.id, agent=g.agent, roles=g.roles, attrs=g.attrs)
            for g in grants.values()
        }
        reach = {g.id: _endpoints_of(g.servers, servers) for g in grants.values() if g.servers}
        return cls(table, anonymous, oauth, http, reach)

    def authenticate(self, authorization: str | None) -> Identity | None:
        """A configured key (or anonymous access): no tokens, no I/O (the admin API asks)."""
        token = bearer(authorization)
        if token is None:
            return ANONYMOUS_LOCAL if self.anonymous else None
        return self.by_digest.get(hash_key(token))

    async def resolve(self, authorization: str | None, path: str) -> Identity | Refusal:
        """Who calls the MCP endpoint at ``path`` (``/mcp`` or ``/mcp/<server>``), or why no
        one: a key, then a token; a token's refusal names the endpoint's metadata."""
        found = self.authenticate(authorization)
        if found is not None:
            allowed = None if found is ANONYMOUS_LOCAL else self.reach.get(found.grant)
            if allowed is not None and path.rstrip("/") not in allowed:
                return Refusal(403, "insufficient_scope", "this key may not reach " + path, None)
            return found
        oauth = self.oauth
        endpoint = oauth.endpoint(path) if oauth is not None else None
        token = bearer(authorization)
        if token is None:
            return Refusal(401, "", "missing bearer credentials", endpoint)
        if oauth is None:
            return Refusal(401, "invalid_token", "invalid bearer key", None)
        if token.startswith(OWN_PREFIXES):
            # A key or admin token of celgate's own making (one rotated out, the operator's):
            # never the issuer's to see, so never sent to its introspection endpoint.
            return Refusal(401, "invalid_token", "unknown celgate key", endpoint)
        return await oauth.authenticate(token, path)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


def _endpoints_of(named: Collection[str], every: Collection[str]) -> frozenset[str]:
    paths = {AGGREGATE + "/" + name for name in named}
    if set(every) <= set(named):
        paths.add(AGGREGATE)
    return frozenset(paths)


def build_authenticator(
    grants: Mapping[str, GrantConfig],
    anonymous: bool,
    oauth_config: OAuthConfig | None,
    servers: list[str],
) -> Authenticator:
    """Keys from ``grants``; tokens too when the config has an ``oauth`` section."""
    if oauth_config is None:
        return Authenticator.from_grants(grants, anonymous, servers=servers)
    http = IssuerHttp()
    oauth = TokenAuthority(oauth_config, servers, http.get)
    if oauth_config.introspection is not None:
        from gateway.auth.introspect import Introspector

        oauth.introspector = Introspector(oauth_config.introspection, oauth, http.post_form)
    return Authenticator.from_grants(grants, anonymous, oauth, http, servers)


def refusal_answer(refusal: Refusal) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """Status, JSON-RPC error message and ``WWW-Authenticate`` of a refused caller."""
    if refusal.endpoint is None and refusal.status == 403:  # a key that may not come here
        value = 'Bearer realm="celgate", error="insufficient_scope"'
        return 403, refusal.description, [(b"www-authenticate", value.encode())]
    if refusal.endpoint is None:
        value = AGENT_CHALLENGE
    elif refusal.error:
        value = challenge(refusal.endpoint, refusal.error, refusal.description)
    else:
        value = challenge(refusal.endpoint)
    message = {
        "": "missing bearer credentials",
        "insufficient_scope": "insufficient scope",
    }.get(refusal.error, f"invalid bearer credentials: {refusal.description}")
    if refusal.endpoint is None and refusal.status == 401:
        message = "missing or invalid bearer key"
    return refusal.status, message, [(b"www-authenticate", value.encode())]


def token_matches(presented: str | None, digest: str | None) -> bool:
    """Compare a presented admin token with a configured sha256 digest, in constant time."""
    if not presented or not digest:
        return False
    return hmac.compare_digest(hash_key(presented), digest)
