"""JSON-RPC messages as the relay sees them: parsed once, strictly, and answered in one shape.

Bodies with duplicate object keys are rejected: JSON parsers disagree on which copy wins, so a
body could mean one tool to the gateway and another to the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UPSTREAM_UNAVAILABLE = -32001  # server-defined range: the upstream is down or failed
SESSION_NOT_FOUND = -32002

MODERN_VERSIONS = frozenset({"2026-07-28"})
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"


class BadMessage(Exception):
    """A body the relay refuses, with the JSON-RPC code and HTTP status to answer it with."""

    def __init__(self, code: int, message: str, status: int = 400, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.msg_id = msg_id


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadMessage(PARSE_ERROR, f"duplicate key {key!r} in JSON object")
            seen.add(key)
    return out


def parse_body(body: bytes) -> Any:
    """Parse a request body, rejecting invalid UTF-8, invalid JSON and duplicate keys."""
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise BadMessage(PARSE_ERROR, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadMessage(PARSE_ERROR, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise BadMessage(PARSE_ERROR, "JSON nested too deeply") from None


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message from the client."""

    raw: Mapping[str, Any]
    method: str | None
    msg_id: Any
    params: Mapping[str, Any]

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.raw

    @property
    def protocol_version(self) -> str | None:
        meta = self.params.get("_meta")
        if isinstance(meta, Mapping):
            version = meta.get(PROTOCOL_VERSION_META_KEY)
            return version if isinstance(version, str) else None
        return None


def classify(value: Any) -> Message:
    """Check the JSON-RPC envelope of one message (batches were removed in 2025-06-18)."""
    if isinstance(value, list):
        raise BadMessage(INVALID_REQUEST, "JSON-RPC batches are not supported")
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise BadMessage(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    msg_id = value.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise BadMessage(INVALID_REQUEST, "id must be a string or an integer")
    method = value.get("method")
    if method is not None and not isinstance(method, str):
        raise BadMessage(INVALID_REQUEST, "method must be a string", msg_id=msg_id)
    params = value.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadMessage(INVALID_REQUEST, "params must be an object", msg_id=msg_id)
    return Message(value, method, msg_id, params)


def error_body(msg_id: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}).encode()


def result_body(msg_id: Any, result: Mapping[str, Any]) -> bytes:
    payload = {"jsonrpc": "2.0", "id": msg_id, "result": result}
    return json.dumps(payload, ensure_ascii=False).encode()
