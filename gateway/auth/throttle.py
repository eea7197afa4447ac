"""Wrong admin tokens, counted per client address: a few tries at once, then one try every
few seconds. An admin token is long and random when ``celgate admin`` made it, but an
operator may choose a short one; this keeps guessing slow either way. Memory is bounded: at
``max_clients`` the oldest address is forgotten (which can only give it its tries back)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class FailureThrottle:
    """A token bucket per client address, spent only by failures."""

    def __init__(
        self,
        burst: int = 10,
        refill_seconds: float = 6.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_clients = max_clients
        self.clock = clock
        self._tries: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (tries, when)

    def _now_tries(self, client: str) -> float:
        tries, when = self._tries.get(client, (float(self.burst), self.clock()))
        return min(float(self.burst), tries + (self.clock() - when) / self.refill_seconds)

    def wait(self, client: str | None) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        tries = self._now_tries(client or "")
        if tries >= 1.0:
            return None
        return (1.0 - tries) * self.refill_seconds

    def failed(self, client: str | None) -> None:
        key = client or ""
        tries = self._now_tries(key) - 1.0
        self._tries[key] = (max(tries, 0.0), self.clock())
        self._tries.move_to_end(key)
        while len(self._tries) > self.max_clients:
            self._tries.popitem(last=False)
