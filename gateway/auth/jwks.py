"""The issuer's signing keys: fetched from its metadata, cached, refetched on an unknown ``kid``.

A token whose ``kid`` is known is checked with no network call. An unknown ``kid`` (the issuer
rotated its keys) refetches the key set, and so does a signature that fails with a key held (a
new key under the same ``kid``, or a one-key set without kids), at most once per ``cooldown``
seconds: a flood of made-up ``kid`` values or forged signatures costs the issuer one request
per cooldown, not one per token. Any change of a key's material counts as a new set. A key set
older than ``max_age`` is refreshed in the background while the old one keeps serving. A key
that leaves the set is no longer trusted from the refresh on.

Only public signature keys are kept: a symmetric (``oct``) key in a JWKS is dropped, as is a
key marked for encryption or for an algorithm not allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.auth.settings import OAuthConfig, is_loopback
from gateway.errors import KeySetUnavailable

log = structlog.get_logger("celgate.oauth")
MAX_DOCUMENT = 1024 * 1024
_ASYMMETRIC = {"RSA", "EC", "OKP"}

#: GET a URL, answer (status, body); the gateway's is httpx2, tests may pass their own.
Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]
Clock = Callable[[], float]


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be (RFC 8414 section 3.1, then OpenID Connect)."""
    scheme_host, _, path = issuer.partition("://")
    host, slash, rest = path.partition("/")
    suffix = "/" + rest.rstrip("/") if slash and rest.strip("/") else ""
    root = f"{scheme_host}://{host}"
    return [
        f"{root}/.well-known/oauth-authorization-server{suffix}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


def _usable(jwk: Any, algorithms: tuple[str, ...]) -> bool:
    if not isinstance(jwk, dict) or jwk.get("kty") not in _ASYMMETRIC:
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    alg = jwk.get("alg")
    return alg is None or alg in algorithms


class KeySource:
    """The issuer's current key set; ``key_for(kid)`` awaits a refetch only for a new ``kid``."""

    def __init__(self, config: OAuthConfig, fetch: Fetch, clock: Clock) -> None:
        self.config = config
        self.fetch = fetch
        self.clock = clock
        self.keys: KeySet | None = None
        self.kids: frozenset[str] = frozenset()
        self.material: frozenset[str] = frozenset()  # each usable key, as canonical JSON
        self.jwks_uri = config.jwks_uri
        self.metadata: dict[str, Any] = {}
        self.fetched_at = 0.0
        self.last_refetch: float | None = None  # the last one an unknown kid caused
        self.fetches = 0
        self.generation = 0  # bumped when the set changes: verified tokens are forgotten
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._discovery_failed = float("-inf")

    async def key_for(self, kid: str | None) -> Any:
        """The key a token names, or None (unknown even after a refetch, or refetch limited)."""
        keys = self.keys
        if keys is not None:
            if self.clock() - self.fetched_at > self.config.jwks_max_age:
                self._refresh_in_background()
            found = self._lookup(keys, kid)
            if found is not None:
                return found
        if self._lock.locked():
            # A fetch under way (the first load, or another caller's refetch) may bring this
            # key: wait for it and look again. Refused at once, 14 of 16 honest callers at a
            # fresh gateway were told "unknown signing key" while the set was loading, and
            # the second one spent the cooldown besides (red-team wave 42).
            async with self._lock:
                pass
            found = self._lookup(self.keys, kid) if self.keys is not None else None
            if found is not None:
                return found
        if not self._may_refetch():
            log.info("oauth.jwks_refetch_limited", kid=kid)
            return None
        try:
            await self.refresh()
        except KeySetUnavailable:
            return None
        return self._lookup(self.keys, kid) if self.keys is not None else None

    async def changed_on_refetch(self) -> bool:
        """Fetch the set again (unless the cooldown forbids) and say whether it changed: a
        signature that fails with a held key may be a rotation under the same ``kid``."""
        if self.keys is None or not self._may_refetch():
            return False
        before = self.generation
        try:
            await self.refresh()
        except KeySetUnavailable:
            return False
        return self.generation != before

    def _may_refetch(self) -> bool:
        now = self.clock()
        if self.keys is None and self.fetches == 0:
            return True  # the first load is no refetch: a rotation right after it is served
        if self.last_refetch is not None and now - self.last_refetch < self.config.jwks_cooldown:
            return False
        self.last_refetch = now
        return True

    @staticmethod
    def _lookup(keys: KeySet, kid: str | None) -> Any:
        if kid is None:  # no kid: only a set of exactly one key says which
            return keys.keys[0] if len(keys.keys) == 1 else None
        try:
            return keys.get_by_kid(kid)
        except (JoseError, ValueError):
            return None

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self.fetched_at = self.clock()  # one try per max_age, even if it fails
            self._background = asyncio.get_running_loop().create_task(self._quiet_refresh())

    async def _quiet_refresh(self) -> None:
        with contextlib.suppress(KeySetUnavailable):
            await self.refresh()

    async def refresh(self) -> None:
        """Fetch the key set (one fetch at a time: callers arriving meanwhile share it)."""
        started = self.fetches
        async with self._lock:
            if self.fetches != started and self.keys is not None:
                return  # another caller fetched while we waited
            self.fetches += 1
            try:
                await self._load()
            except KeySetUnavailable as exc:
                log.warning("oauth.jwks_unavailable", issuer=self.config.issuer, error=str(exc))
                raise

    async def _load(self) -> None:
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        document = await self._get_json(self.jwks_uri)
        raw = document.get("keys")
        if not isinstance(raw, list):
            raise KeySetUnavailable("the JWKS has no keys list")
        usable = [k for k in raw if _usable(k, self.config.algorithms)]
        try:
            keys = KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError, TypeError) as exc:
            raise KeySetUnavailable(f"the JWKS does not read: {type(exc).__name__}") from None
        kids = frozenset(str(k["kid"]) for k in usable if "kid" in k)
        # A key swapped under the same kid (or under none) changes the set too.
        material = frozenset(json.dumps(k, sort_keys=True) for k in usable)
        if material != self.material or self.keys is None:
            self.generation += 1
        self.keys, self.kids, self.fetched_at = keys, kids, self.clock()
        self.material = material
        log.info("oauth.jwks_loaded", issuer=self.config.issuer, kids=sorted(kids))

    async def discovered(self, name: str) -> str | None:
        """A field of the issuer's metadata (discovered once; a failure is retried after the
        cooldown)."""
        if not self.metadata:
            now = self.clock()
            if now - self._discovery_failed < self.config.jwks_cooldown:
                return None
            try:
                await self._discover()
            except KeySetUnavailable:
                self._discovery_failed = now
                return None
        value = self.metadata.get(name)
        return value if isinstance(value, str) else None

    async def _discover(self) -> str:
        for url in discovery_urls(self.config.issuer):
            try:
                document = await self._get_json(url)
            except KeySetUnavailable:
                continue
            if document.get("issuer") != self.config.issuer:
                raise KeySetUnavailable(f"metadata at {url} names another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise KeySetUnavailable(f"metadata at {url} has no jwks_uri")
            if not jwks_uri.startswith("https://") and not is_loopback(jwks_uri):
                raise KeySetUnavailable("jwks_uri must be https outside loopback")
            self.metadata = document
            return jwks_uri
        raise KeySetUnavailable("no authorization server metadata found for the issuer")

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            status, body = await self.fetch(url)
        except Exception as exc:  # the HTTP client's own errors: the issuer is unreachable
            raise KeySetUnavailable(f"{url}: {type(exc).__name__}") from None
        if status != 200 or len(body) > MAX_DOCUMENT:
            raise KeySetUnavailable(f"{url}: HTTP {status}")
        try:
            document = json.loads(body)
        except ValueError:
            raise KeySetUnavailable(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise KeySetUnavailable(f"{url}: not a JSON object")
        return document
