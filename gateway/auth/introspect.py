"""RFC 7662 introspection of opaque access tokens (ones that are not JWTs).

The answer is kept for the token's lifetime (``exp``), and never longer than ``max_cache``
seconds, so a revoked token is refused at most that long after. An answer without ``aud`` is
refused: the gateway cannot tell the token was minted for it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.auth.settings import IntrospectionConfig, is_loopback

if TYPE_CHECKING:
    from gateway.auth.tokens import TokenAuthority, Verified

Post = Callable[[str, dict[str, str], tuple[str, str]], Awaitable[tuple[int, bytes]]]


class Introspector:
    def __init__(self, config: IntrospectionConfig, authority: TokenAuthority, post: Post) -> None:
        self.config = config
        self.authority = authority
        self.post = post
        self.endpoint = config.endpoint

    async def check(self, token: str) -> Verified | str:
        endpoint = self.endpoint or await self._discover()
        if endpoint is None:
            return "no introspection endpoint"
        auth = (self.config.client_id, self.config.client_secret)
        form = {"token": token, "token_type_hint": "access_token"}
        try:
            status, body = await self.post(endpoint, form, auth)
            answer = json.loads(body) if status == 200 else None
        except Exception:  # the issuer unreachable or answering nonsense: the token proves nothing
            return "introspection failed"
        if not isinstance(answer, dict):
            return "introspection failed"
        return self._verified(answer)

    def _verified(self, answer: dict[str, Any]) -> Verified | str:
        authority = self.authority
        if answer.get("active") is not True:
            return "token not active"
        if answer.get("iss", authority.config.issuer) != authority.config.issuer:
            return "invalid iss claim"
        if "aud" not in answer:
            return "introspection names no audience"
        now = authority.clock()
        horizon = now + self.config.max_cache
        exp = answer.get("exp")
        claims = dict(answer)
        claims["exp"] = min(exp, horizon) if isinstance(exp, int | float) else horizon
        verified = authority.verified_of(claims, "introspection")
        if isinstance(verified, str):
            return verified
        accepted = set().union(*(e.audiences for e in authority.endpoints.values()))
        if not verified.audiences & accepted:
            return "token is for another resource"
        return verified

    async def _discover(self) -> str | None:
        keys = self.authority.keys
        value = await keys.discovered("introspection_endpoint")
        if value is not None and (value.startswith("https://") or is_loopback(value)):
            self.endpoint = value
        return self.endpoint
