"""Agents authenticated by OAuth 2.1 access tokens (docs/oauth.md).

settings   the ``oauth:`` config section
resource   resource URIs, Protected Resource Metadata (RFC 9728), challenges
jwks       the issuer's keys: fetched, cached, refetched on an unknown kid (rate-limited)
tokens     JWT verification, claims to grant, per-endpoint audience and scopes
introspect RFC 7662 introspection of opaque tokens
agent      the Agent identity (how it authenticated, its claims)
"""

from __future__ import annotations

from gateway.auth.agent import Agent, AuthMethod
from gateway.auth.settings import OAuthConfig

__all__ = ["Agent", "AuthMethod", "OAuthConfig"]
