"""The HTTP client that talks to the authorization server (metadata, JWKS, introspection).

Never on a call's path while the keys are known. TLS is verified with the system's trust
store; redirects are not followed (a metadata document moved elsewhere is a misconfiguration).
"""

from __future__ import annotations

import httpx2

TIMEOUT = 5.0


class IssuerHttp:
    def __init__(self, timeout: float = TIMEOUT) -> None:
        self._client: httpx2.AsyncClient | None = None
        self.timeout = timeout

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._client

    async def get(self, url: str) -> tuple[int, bytes]:
        resp = await self._http().get(url, headers={"accept": "application/json"})
        return resp.status_code, resp.content

    async def post_form(
        self, url: str, form: dict[str, str], auth: tuple[str, str]
    ) -> tuple[int, bytes]:
        headers = {"accept": "application/json"}
        resp = await self._http().post(url, data=form, auth=auth, headers=headers)
        return resp.status_code, resp.content

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
