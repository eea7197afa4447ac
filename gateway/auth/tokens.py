"""Access tokens from the identity provider, checked and turned into an Agent.

``verify`` checks what holds for the token everywhere (signature with an allowed algorithm
against the issuer's key, ``iss``, ``exp``/``nbf`` with leeway, an ``aud`` this gateway
accepts) and maps its claims to a grant; ``admit`` checks what depends on the endpoint (its
resource URI among the audiences, its scopes) and the time again. A verified token is kept
until it expires (or the key set changes), so a client's next call costs a dict look-up and
its Agent is the same object (which CEL's per-identity conversion cache relies on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError
from joserfc.jwt import JWTClaimsRegistry

from gateway.auth.agent import Agent, AuthMethod
from gateway.auth.introspect import BUSY
from gateway.auth.jwks import Clock, Fetch, KeySource
from gateway.auth.resource import Endpoint, endpoint_at, endpoints
from gateway.auth.settings import ClaimMap, OAuthConfig

log = structlog.get_logger("celgate.oauth")
MAX_VERIFIED = 10_000
MAX_TOKEN = 16 * 1024


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid token proved, independent of the endpoint it is shown to."""

    agent: Agent
    expires: float
    not_before: float
    audiences: frozenset[str]
    scopes: frozenset[str]
    #: Until when the proof may be used without asking again (an introspection answer's
    #: ``max_cache``), with no leeway: the leeway is for the issuer's clock, not this one's.
    kept_until: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a token is not accepted here: 401 ``invalid_token`` or 403 ``insufficient_scope``."""

    status: int
    error: str
    description: str
    endpoint: Endpoint | None


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects; None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def spaced(raw: str) -> list[str]:
    """A space-separated claim's parts, split on U+0020 only (RFC 6749's scope syntax):
    ``str.split()`` also split on NBSP, U+3000 and the like, so one role or group named
    ``intern\u00a0admin`` was the roles ``intern`` and ``admin`` (red-team wave 38)."""
    return [part for part in raw.split(" ") if part]


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 9068, space-separated) or ``scp`` (a list, as some IdPs write it)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return frozenset(spaced(raw))
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


def agent_of(claims: Mapping[str, Any], mapping: ClaimMap, auth: AuthMethod) -> Agent | str:
    """The Agent the claims describe, or why they describe none."""
    ids = []
    for name in (mapping.grant, mapping.agent):
        value = claim(claims, name)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            return f"token lacks the {name} claim"
        ids.append(str(value))
    roles: tuple[str, ...] = ()
    if mapping.roles is not None:
        raw = claim(claims, mapping.roles)
        if isinstance(raw, str):
            roles = tuple(spaced(raw))
        elif isinstance(raw, list) and all(isinstance(r, str) for r in raw):
            roles = tuple(raw)
        elif raw is not None:
            return f"the {mapping.roles} claim is not a list of roles"
    attrs = {name: claim(claims, path) for name, path in mapping.attrs.items()}
    attrs = {k: v for k, v in attrs.items() if v is not None and cel_readable(v)}
    readable = {k: v for k, v in claims.items() if cel_readable(v)}
    return Agent(ids[0], ids[1], roles, attrs, auth=auth, claims=readable)


#: CEL's ints are 64-bit; JSON's are not.
_INT64 = (-(2**63), 2**63 - 1)


def cel_readable(value: Any, depth: int = 0) -> bool:
    """Whether a claim's value can be a CEL value. One that cannot (an int past 64 bits,
    nesting past 32 levels) is left out of ``agent.claims`` and ``agent.attrs``: kept, it
    would make every rule that reads ``agent`` fail (a deny for all the token's calls, over a
    claim no rule reads); left out, a rule that reads it finds no such claim."""
    if isinstance(value, bool | str | float) or value is None:
        return True
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    if depth >= 32:
        return False
    if isinstance(value, list):
        return all(cel_readable(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(cel_readable(item, depth + 1) for item in value.values())
    return False


#: A JWT's ``typ`` header an access token may carry (RFC 9068's, the plain one's).
ACCESS_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
#: Claims by which issuers say what kind of token one is (Cognito's ``token_use``, Hydra's
#: and others' ``token_type``, Keycloak's ``typ``).
TOKEN_KIND_CLAIMS = ("token_use", "token_type", "typ")


def not_access(claims: Mapping[str, Any]) -> str | None:
    """Why a token is not an access token by what it says of itself, or None: a refresh
    token, leaked, would serve for weeks as a bearer token, and an ID token is the client's
    proof of a sign-in, not a grant to call anything (both were taken as access tokens)."""
    for field in TOKEN_KIND_CLAIMS:
        said = str(claims.get(field, "")).lower()
        if "refresh" in said:
            return "a refresh token is not an access token"
        # RFC 8693's URN (urn:ietf:params:oauth:token-type:id_token) names its kind last
        if said.rpartition(":")[2] in ("id", "id_token", "idtoken"):
            return "an ID token is not an access token"
    return None


class TokenAuthority:
    """Verifies bearer tokens for the endpoints of one gateway."""

    def __init__(
        self, config: OAuthConfig, servers: list[str], fetch: Fetch, clock: Clock = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.endpoints = endpoints(config, servers)
        self.keys = KeySource(config, fetch, clock)
        self.verified: dict[str, Verified] = {}
        self._generation = 0
        audiences = set().union(*(e.audiences for e in self.endpoints.values()))
        self.registry = JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=config.leeway,
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "values": sorted(audiences)},
            exp={"essential": True},
        )
        self.introspector: Any = None  # gateway.auth.introspect.Introspector, when configured

    def endpoint(self, path: str) -> Endpoint | None:
        return endpoint_at(self.config, self.endpoints, path.rstrip("/"))

    async def authenticate(self, token: str, path: str) -> Agent | Refusal:
        endpoint = self.endpoint(path)
        verified = await self.verify(token)
        if verified == BUSY:  # nothing said of the token: the caller tries again shortly
            log.warning("oauth.introspection_busy", path=path)
            return Refusal(503, "temporarily_unavailable", verified, endpoint)
        if isinstance(verified, str):
            log.info("oauth.refused", path=path, reason=verified)
            return Refusal(401, "invalid_token", verified, endpoint)
        admitted = self.admit(verified, endpoint)
        if isinstance(admitted, Refusal):  # a good token shown where it does not reach
            log.info("oauth.refused", path=path, reason=admitted.description)
        return admitted

    def admit(self, token: Verified, endpoint: Endpoint | None) -> Agent | Refusal:
        """The endpoint-dependent checks, on every call (a kept token may have expired)."""
        now, leeway = self.clock(), self.config.leeway
        problem = None
        if endpoint is None:
            problem = "not a protected endpoint"
        elif now > token.expires + leeway:
            problem = "token expired"
        elif now < token.not_before - leeway:
            problem = "token not yet valid"
        elif not token.audiences & endpoint.audiences:
            problem = "token is for another resource"
        if problem is not None:
            return Refusal(401, "invalid_token", problem, endpoint)
        assert endpoint is not None
        if not token.scopes.issuperset(endpoint.scopes):
            return Refusal(403, "insufficient_scope", "token lacks a required scope", endpoint)
        return token.agent

    async def verify(self, token: str) -> Verified | str:
        """The token's proof, or the reason it proves nothing."""
        if self.keys.generation != self._generation:
            self._keys_changed()
        known = self.verified.get(token)
        now = self.clock()
        if (
            known is not None
            and now <= known.expires + self.config.leeway
            and (known.kept_until is None or now < known.kept_until)
        ):
            return known
        self.verified.pop(token, None)  # expired: checked again (and refused, or re-introspected)
        if len(token) > MAX_TOKEN:
            return "token too large"
        if token.count(".") == 2:
            result = await self._jwt(token)
        elif self.introspector is not None:
            result = await self.introspector.check(token)
        else:
            return "not a JWT"
        if isinstance(result, Verified):
            self._keep(token, result)
        return result

    def _keep(self, token: str, verified: Verified) -> None:
        if self.keys.generation != self._generation:  # the set changed while it was checked
            self._keys_changed()
        if len(self.verified) >= MAX_VERIFIED:
            now = self.clock()
            for old in [t for t, v in self.verified.items() if v.expires < now]:
                del self.verified[old]
            while len(self.verified) >= MAX_VERIFIED:
                del self.verified[next(iter(self.verified))]  # the oldest kept
        self.verified[token] = verified

    def _keys_changed(self) -> None:
        """Keys left the set: what they signed is checked again. What the issuer vouched for
        by introspection no key signed, and stays (a forged token's unknown ``kid`` loads the
        key set: it flushed every user's introspected token, each then asked of the issuer
        again, and refused as busy while it was flooded)."""
        self.verified = {t: v for t, v in self.verified.items() if v.agent.auth == "introspection"}
        self._generation = self.keys.generation

    async def _jwt(self, token: str) -> Verified | str:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, TypeError):
            return "malformed token"
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            return "signature algorithm not allowed"
        kind = header.get("typ")
        if kind is not None and str(kind).lower() not in ACCESS_TYPES:
            return "not an access token (its typ header)"  # refresh+jwt, a logout token...
        kid = header.get("kid")
        claims = await self._signed(token, alg, kid if isinstance(kid, str) else None)
        if isinstance(claims, str):
            return claims
        if not isinstance(claims.get("iss"), str):  # one issuer, as written (RFC 7519)
            return "invalid iss claim"  # (the registry took a list holding ours, and others)
        try:
            self.registry.validate(claims)
        except ExpiredTokenError:
            return "token expired"
        except ClaimError as exc:
            return f"invalid {getattr(exc, 'claim', 'claim')} claim"
        except (JoseError, ValueError, TypeError):
            return "bad signature"
        return self.verified_of(claims, "token")

    async def _signed(
        self, token: str, alg: str, kid: str | None, again: bool = True
    ) -> dict[str, Any] | str:
        """The token's claims once its signature checks with the key it names, or why not. A
        signature that fails with a key held may be the issuer's new key under the same
        ``kid`` (or under none): the set is fetched again (at most once per cooldown) and the
        token checked once more with what it holds then."""
        key = await self.keys.key_for(kid)
        if key is None:
            return "unknown signing key"
        if key.alg is not None and key.alg != alg:
            return "signature algorithm does not match the key"
        try:
            return dict(jwt.decode(token, key, algorithms=[alg]).claims)
        except (JoseError, ValueError, TypeError):
            if again and await self.keys.changed_on_refetch():
                return await self._signed(token, alg, kid, again=False)
            return "bad signature"

    def verified_of(self, claims: Mapping[str, Any], auth: AuthMethod) -> Verified | str:
        refused = not_access(claims)
        if refused is not None:
            return refused
        agent = agent_of(claims, self.config.claims, auth)
        if isinstance(agent, str):
            return agent
        aud = claims.get("aud")
        if aud is not None and not (
            isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
        ):
            return "invalid aud claim"  # (an object in the list answered 500)
        audiences = frozenset([aud] if isinstance(aud, str) else aud or ())
        expires = _seconds(claims.get("exp"))
        if expires is None:
            return "invalid exp claim"
        not_before = _seconds(claims.get("nbf", 0))
        if not_before is None:
            return "invalid nbf claim"
        scopes = scopes_of(claims)
        return Verified(agent, expires, not_before, audiences, scopes)


def _seconds(value: Any) -> float | None:
    """A time claim (``exp``, ``nbf``) as seconds since the epoch, or None when it is none:
    not a number (``true`` is none either), or not a finite one a float holds. A huge
    integer answered 500 (``float()`` overflowed), ``1e400`` read as infinity made a token
    that never expired, and ``NaN`` compared false with every time: never "not yet"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None
