"""Rewrite JSON-RPC messages inside a Server-Sent Events stream without buffering it.

Events are emitted as soon as their blank line arrives; an event whose message the transform
leaves alone is passed on byte for byte, so ``id:`` fields (and ``Last-Event-ID`` resumption)
are untouched. Line ends may be CRLF, LF or CR, and an event may arrive split across chunks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

# Two line ends in a row. Atomic groups stop "\r\n" from also counting as "\r" then "\n".
_EVENT_END = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
_LINE = re.compile(rb"\r\n|\r|\n")

Transform = Callable[[dict[str, Any]], dict[str, Any] | None]


def _rewrite_event(event: bytes, transform: Transform) -> bytes:
    lines = _LINE.split(event)
    data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
    if not data:
        return event
    try:
        message = json.loads(b"\n".join(data))
    except (ValueError, UnicodeDecodeError):
        return event
    if not isinstance(message, dict):
        return event
    changed = transform(message)
    if changed is None:
        return event
    out: list[bytes] = []
    for line in lines:
        if line.startswith(b"data:"):
            if changed is not None:
                out.append(b"data: " + json.dumps(changed, ensure_ascii=False).encode())
                changed = None
        elif line:
            out.append(line)
    return b"\n".join(out) + b"\n\n"


class SseRewriter:
    """Feed chunks in, get the bytes to send on at once."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform
        self.buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out: list[bytes] = []
        while True:
            match = _EVENT_END.search(self.buffer)
            if match is None:
                break
            event, self.buffer = self.buffer[: match.end()], self.buffer[match.end() :]
            out.append(_rewrite_event(event, self.transform))
        return b"".join(out)

    def close(self) -> bytes:
        """Whatever was left without a closing blank line, passed on unchanged."""
        rest, self.buffer = self.buffer, b""
        return rest
