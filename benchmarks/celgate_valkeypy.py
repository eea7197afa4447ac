"""``celgate run`` with the Valkey limiter's ``acquire`` sent through valkey-py's pooled
asyncio client instead of the hand-written lane (``gateway/ratelimit/lane.py``).

A benchmark switch, not a setting: ``bench_valkey_client.py`` starts it beside a stock
gateway to answer issue 19's question (is the lane worth its code?). The limiter is the same
object; only its two hot-path seams are swapped: the command stays a tuple of parts instead of
RESP bytes, and ``execute`` is the pooled client's ``execute_command`` (the limiter's own
``BlockingConnectionPool``: 64 connections, the same timeouts and retry, libvalkey's reply
parser when installed). NOSCRIPT still raises ``NoScriptError``, so reloading works as shipped.

    python benchmarks/celgate_valkeypy.py run --config celgate.yaml --json-logs
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Sequence
from typing import Any

from valkey.asyncio import Valkey

from gateway.cli import main
from gateway.ratelimit import valkey as limiter_module


class PooledLane:
    """The lane's interface over valkey-py: ``execute(parts)`` and ``close()``."""

    def __init__(self, client: Valkey) -> None:
        self.execute_command = client.execute_command

    def execute(self, parts: Sequence[Any]) -> Awaitable[Any]:
        return self.execute_command(*parts)  # no coroutine of our own in between

    async def close(self) -> None:
        """The pool is the limiter's client's; it closes it."""


def use_library_client() -> None:
    stock_init = limiter_module.ValkeyRateLimiter.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        self._lane = PooledLane(self._client)  # the stock lane connects lazily: never opened

    limiter_module.ValkeyRateLimiter.__init__ = init  # type: ignore[method-assign]
    limiter_module.resp_command = tuple  # type: ignore[assignment]


if __name__ == "__main__":
    use_library_client()
    sys.exit(main())
