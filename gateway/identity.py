"""Who is calling: ``Authorization: Bearer <key>`` resolved to a grant.

Keys are never stored: the config holds their sha256, and a presented key is hashed and
looked up by digest (the lookup compares digests, so its timing says nothing about keys).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import GrantConfig
from gateway.policy.model import Identity

KEY_PREFIX = "cgk_"
#: What a 401 says about how to authenticate: agents on the MCP endpoints, operators on admin.
AGENT_CHALLENGE = 'Bearer realm="celgate", error="invalid_token"'
ADMIN_CHALLENGE = 'Bearer realm="celgate-admin"'
ANONYMOUS_LOCAL = Identity(grant="anonymous", agent="anonymous", roles=("anonymous",))


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
    """Maps a presented key to an Identity; ``anonymous`` lets keyless callers in."""

    by_digest: Mapping[str, Identity]
    anonymous: bool = False

    @classmethod
    def from_grants(cls, grants: Mapping[str, GrantConfig], anonymous: bool) -> Authenticator:
        table = {
            g.key_sha256: Identity(grant=g.id, agent=g.agent, roles=g.roles, attrs=g.attrs)
            for g in grants.values()
        }
        return cls(table, anonymous)

    def authenticate(self, authorization: str | None) -> Identity | None:
        token = bearer(authorization)
        if token is None:
            return ANONYMOUS_LOCAL if self.anonymous else None
        return self.by_digest.get(hash_key(token))


def token_matches(presented: str | None, digest: str | None) -> bool:
    """Compare a presented admin token with a configured sha256 digest, in constant time."""
    if not presented or not digest:
        return False
    return hmac.compare_digest(hash_key(presented), digest)
