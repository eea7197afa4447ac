"""The HTTP client that talks to the authorization server (metadata, JWKS, introspection).

Never on a call's path while the keys are known. TLS is verified with the system's trust
store; redirects are not followed (a metadata document moved elsewhere is a misconfiguration).
Every answer is read within ``MAX_ANSWER`` bytes, uncompressed, and whole within
``timeout`` (each read had its own deadline, and a key set dripped a byte every few seconds
held the key set's lock, and every token waiting on it, for good; a gzip key set of 1 MiB
was inflated to 1 GiB before its size was looked at: red-team wave 35).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

TIMEOUT = 5.0
#: One answer at most: a metadata document, a key set, an introspection answer.
MAX_ANSWER = 1024 * 1024


class AnswerRefused(Exception):
    """An answer past ``MAX_ANSWER``, or compressed though none was asked for."""


class IssuerHttp:
    def __init__(self, timeout: float = TIMEOUT) -> None:
        self._client: httpx2.AsyncClient | None = None
        self.timeout = timeout

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._client

    async def get(self, url: str) -> tuple[int, bytes]:
        return await self._read("GET", url)

    async def post_form(
        self, url: str, form: dict[str, str], auth: tuple[str, str]
    ) -> tuple[int, bytes]:
        return await self._read("POST", url, data=form, auth=auth)

    async def _read(self, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with (
            asyncio.timeout(self.timeout),
            self._http().stream(method, url, headers=headers, **kwargs) as resp,
        ):
            coding = resp.headers.get("content-encoding", "").strip().lower()
            if coding not in ("", "identity"):
                raise AnswerRefused(f"a compressed answer ({coding[:40]})")
            body = bytearray()
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > MAX_ANSWER:
                    raise AnswerRefused(f"an answer past {MAX_ANSWER} bytes")
            return resp.status_code, bytes(body)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
