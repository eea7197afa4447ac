"""RFC 7662 introspection of opaque access tokens (ones that are not JWTs).

The answer is kept for the token's lifetime (``exp``), and never longer than ``max_cache``
seconds, so a revoked token is refused at most that long after. An answer without ``aud`` is
refused: the gateway cannot tell the token was minted for it.

Anyone may present a token, so what one presented token can make the issuer do is bounded: a
token the issuer refused is refused again without asking for ``REFUSED_SECONDS`` (kept by its
SHA-256, at most ``MAX_REFUSED``), the same token presented again while it is being asked about
waits for that one answer, and at most ``MAX_IN_FLIGHT`` questions are open at once, with at
most ``MAX_WAITING`` more waiting for a place: past that a new token is answered "introspection
busy" (503, kept nowhere) at once, so a flood of made-up tokens cannot make a real user's
first call wait behind all of them. At most ``MAX_CALLERS`` requests wait for answers at once,
whatever their tokens: a thousand connections sharing a few made-up tokens each waited for
one answer, none of them idle enough to give way to an honest client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.auth.settings import IntrospectionConfig, is_loopback

if TYPE_CHECKING:
    from gateway.auth.tokens import TokenAuthority, Verified

Post = Callable[[str, dict[str, str], tuple[str, str]], Awaitable[tuple[int, bytes]]]
REFUSED_SECONDS = 30.0
MAX_REFUSED = 4096
MAX_IN_FLIGHT = 8
MAX_WAITING = 64
MAX_CALLERS = 256
BUSY = "introspection busy"
#: Reasons that say nothing of the token (the issuer was not reached): never kept.
_TRANSIENT = frozenset({"introspection failed", "no introspection endpoint", BUSY})


#: Where introspection answers say what kind of token it is (RFC 7662 ``token_type``,
#: Ory Hydra's ``token_use``).


class Introspector:
    def __init__(self, config: IntrospectionConfig, authority: TokenAuthority, post: Post) -> None:
        self.config = config
        self.authority = authority
        self.post = post
        self.endpoint = config.endpoint
        self.refused: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.asking: dict[bytes, asyncio.Future[Verified | str]] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.waiting = 0  # questions waiting for one of the slots
        self.callers = 0  # requests waiting for an answer (several may share one question)

    async def check(self, token: str) -> Verified | str:
        """The issuer's word on ``token``: a refusal kept a while, one question at a time for
        the same token, a few questions at once in all."""
        digest = hashlib.sha256(token.encode()).digest()
        kept = self.refused.get(digest)
        if kept is not None:
            if self.authority.clock() < kept[1]:
                return kept[0]
            del self.refused[digest]
        if self.callers >= MAX_CALLERS:
            return BUSY
        pending = self.asking.get(digest)
        if pending is None:
            # A task of its own: one caller going away must not cancel the others' answer.
            pending = self.asking[digest] = asyncio.ensure_future(self._asked(token, digest))
            pending.add_done_callback(lambda _: self.asking.pop(digest, None))
        self.callers += 1
        try:
            return await asyncio.shield(pending)
        finally:
            self.callers -= 1

    async def _asked(self, token: str, digest: bytes) -> Verified | str:
        if self.slots.locked() and self.waiting >= MAX_WAITING:
            return BUSY
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            result = await self._ask(token)
        finally:
            self.slots.release()
        if isinstance(result, str) and result not in _TRANSIENT:
            self._refuse(digest, result)
        return result

    def _refuse(self, digest: bytes, reason: str) -> None:
        self.refused[digest] = (reason, self.authority.clock() + REFUSED_SECONDS)
        self.refused.move_to_end(digest)
        while len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)

    async def _ask(self, token: str) -> Verified | str:
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
        # RFC 7662 answers for refresh tokens too (Hydra does): verified_of refuses one of
        # those (and an ID token) as it refuses such a JWT.
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
        # Asked again after max_cache, to the second: a revoked token is not kept longer.
        return dataclasses.replace(verified, kept_until=horizon)

    async def _discover(self) -> str | None:
        keys = self.authority.keys
        value = await keys.discovered("introspection_endpoint")
        if value is not None and (value.startswith("https://") or is_loopback(value)):
            self.endpoint = value
        return self.endpoint
