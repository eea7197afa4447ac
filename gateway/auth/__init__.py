"""1 authenticate: who is calling, and whether the request may reach the gateway at all.

identity   keys (sha256 digests) and tokens resolved to a grant: the ``Authenticator``
guard      the Host/Origin guard (DNS rebinding) and signed session and event ids
settings   the ``oauth:`` config section and the grant type
resource   resource URIs, Protected Resource Metadata (RFC 9728), challenges
jwks       the issuer's keys: fetched, cached, refetched on an unknown kid (rate-limited)
tokens     JWT verification, claims to grant, per-endpoint audience and scopes
introspect RFC 7662 introspection of opaque tokens
agent      the Agent identity (how it authenticated, its claims)

OAuth 2.1 access tokens: docs/oauth.md.
"""

from __future__ import annotations

from gateway.auth.agent import Agent, AuthMethod
from gateway.auth.settings import OAuthConfig

__all__ = ["Agent", "AuthMethod", "OAuthConfig"]
