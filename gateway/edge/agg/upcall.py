"""One request from the aggregate to one upstream, answered whole: what a merged list or a
merged ``server/discover`` is made of. Sent through the upstream's own pool (as the relay's
forwards are), the answer read as JSON or as the SSE event that carries it."""

from __future__ import annotations

import json
from typing import Any

from gateway.edge.forward import UPSTREAM_ERRORS, _read_bounded
from gateway.upstream.http import HttpUpstream
from gateway.wire import jsonrpc as rpc
from gateway.wire.sse import _LINE

#: The id the aggregate's own requests carry upstream (never seen by a client).
UPCALL_ID = "celgate-agg"


class UpcallFailed(Exception):
    """The upstream did not answer this request usefully (down, timed out, not JSON-RPC)."""


def _headers(upstream: HttpUpstream, method: str, version: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "accept-encoding": "identity",
        "mcp-protocol-version": version,
        "mcp-method": method,
        **upstream.headers,
    }


def body_of(method: str, params: dict[str, Any], version: str, meta: Any) -> bytes:
    """The request, carrying the caller's own ``_meta`` (its envelope: client info and
    capabilities, which a 2026-07-28 server requires)."""
    meta = {**(meta if isinstance(meta, dict) else {}), rpc.PROTOCOL_VERSION_META_KEY: version}
    request = {
        "jsonrpc": "2.0",
        "id": UPCALL_ID,
        "method": method,
        "params": {**params, "_meta": meta},
    }
    return json.dumps(request).encode()


async def upcall(
    upstream: HttpUpstream, method: str, params: dict[str, Any], version: str, meta: Any = None
) -> dict[str, Any]:
    """The upstream's answer (a JSON-RPC response object, result or error)."""
    headers = _headers(upstream, method, version)
    try:
        resp = await upstream.pool.request("POST", headers, body_of(method, params, version, meta))
    except (*UPSTREAM_ERRORS, TimeoutError) as exc:
        raise UpcallFailed(f"upstream {upstream.name!r} is unavailable") from exc
    try:
        data = await _read_bounded(resp)
    except UPSTREAM_ERRORS as exc:
        raise UpcallFailed(f"upstream {upstream.name!r} failed while answering") from exc
    finally:
        resp.close()
    if data is None:
        raise UpcallFailed(f"upstream {upstream.name!r} answered too much")
    sse = resp.headers.get("content-type", "").startswith("text/event-stream")
    for message in _messages(data, sse):
        if isinstance(message, dict) and message.get("id") == UPCALL_ID:
            return message
    raise UpcallFailed(f"upstream {upstream.name!r} gave no answer (HTTP {resp.status})")


def _messages(data: bytes, sse: bool) -> list[Any]:
    if not sse:
        return [_loads(data)]
    out: list[Any] = []
    event: list[bytes] = []
    for line in [*_LINE.split(data), b""]:
        if line.startswith(b"data:"):
            event.append(line[5:].removeprefix(b" "))
        elif not line and event:
            out.append(_loads(b"\n".join(event)))
            event = []
    return out


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
