"""Pick a limiter from the ``limits.backend`` URL.

A typo must not quietly become per-process memory (limits would stop being shared between
replicas without anyone noticing), so anything but a well-formed memory or Valkey URL is a
``ValueError`` that says what was expected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.ratelimit.base import RateLimiter
from gateway.ratelimit.memory import Clock, MemoryRateLimiter
from gateway.ratelimit.valkey import DEFAULT_BUSY_POLL, ValkeyRateLimiter

_EXPECTED = "expected 'memory', 'memory://', 'valkey://host:port/db' or 'valkeys://host:port/db'"


def make_limiter(
    url: str, *, clock: Clock | None = None, busy_poll_us: int | None = None
) -> RateLimiter:
    """The limiter ``url`` names; ``clock`` only applies to the in-memory one, ``busy_poll_us``
    only to Valkey (None: the default)."""
    text = url.strip()
    if text in ("memory", "memory://"):
        return MemoryRateLimiter(clock)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in ("valkey", "valkeys"):
        check_valkey_url(text)
        busy_poll = DEFAULT_BUSY_POLL if busy_poll_us is None else busy_poll_us / 1e6
        return ValkeyRateLimiter(text, busy_poll=busy_poll)
    raise ValueError(f"unknown rate-limit backend {url!r}: {_EXPECTED}")


def check_valkey_url(url: str) -> None:
    """Raise ValueError unless ``url`` has a host, a numeric port (if any) and a numeric db."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"rate-limit backend {url!r} has no host: {_EXPECTED}")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily, on access
    except ValueError:
        raise ValueError(f"rate-limit backend {url!r} has a bad port: {_EXPECTED}") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"rate-limit backend {url!r}: db must be a number, got {db!r}")
