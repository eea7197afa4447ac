"""RESP on the Valkey limiter's hot path: commands framed, replies parsed in C, one waiting
exchange per connection, error replies raised as the ``valkey`` package's exceptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

import libvalkey
from valkey.exceptions import (
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    ResponseError,
)
from valkey.exceptions import (
    ConnectionError as ValkeyConnectionError,
)

_AUTH_ERRORS = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username")


def resp_command(parts: Sequence[Any]) -> bytes:
    """One command in RESP framing: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Wire(asyncio.Protocol):
    """One connection: bytes in are parsed in C; a complete reply wakes the waiting exchange.

    Replies are strictly one per request, and a connection carries one exchange at a time, so
    bytes that arrive while nobody waits can only be the late answer of an abandoned exchange;
    such a connection is never reused (the lane drops it), and this closes it as well.
    """

    def __init__(self) -> None:
        self.reader = libvalkey.Reader()
        self.waiter: asyncio.Future[Any] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.arrived = 0.0  # perf_counter() when the last complete reply came in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()
            return
        try:
            self.reader.feed(data)
            reply = self.reader.gets()
        except Exception as exc:  # a protocol error: this connection is finished
            self.close()
            waiter.set_exception(ValkeyConnectionError(f"bad reply from valkey: {exc}"))
            return
        if reply is not False:
            self.arrived = time.perf_counter()
            self.waiter = None
            waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ValkeyConnectionError("valkey closed the connection"))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one command; the returned future gets its reply (error replies included)."""
        assert self.transport is not None
        if self.closed:
            raise ValkeyConnectionError("valkey closed the connection")
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(command)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def check(reply: Any) -> Any:
    """The reply, or the error it carries raised as the ``valkey`` package's exception."""
    if isinstance(reply, libvalkey.ReplyError):
        message = str(reply)
        if message.startswith("NOSCRIPT"):
            raise NoScriptError(message)
        if message.startswith(_AUTH_ERRORS):
            raise AuthenticationError(message)
        if message.startswith("NOPERM"):  # an ACL user without the script, command or key
            raise NoPermissionError(message)
        raise ResponseError(message)
    return reply
