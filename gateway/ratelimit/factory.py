"""Pick a limiter from the ``limits.backend`` URL.

A typo must not quietly become per-process memory (limits would stop being shared between
replicas without anyone noticing), so anything but a well-formed memory or Valkey URL is a
``ValueError`` that says what was expected. The config loader asks :func:`backend_problem`
the same question, so a bad URL fails at load with ``file:line``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from valkey.asyncio import Valkey
from valkey.exceptions import ValkeyError

from gateway.ratelimit.base import RateLimiter
from gateway.ratelimit.client import check_url, valkey_client
from gateway.ratelimit.memory import Clock, MemoryRateLimiter
from gateway.ratelimit.valkey import ValkeyRateLimiter

_EXPECTED = "use memory, valkey://host:port/db, valkeys:// for TLS or unix:///path"
MEMORY = ("memory", "memory://")


def make_limiter(
    url: str,
    *,
    clock: Clock | None = None,
    timeout_ms: int = 500,
    key_prefix: str = "celgate:",
    client: Valkey | None = None,
) -> RateLimiter:
    """The limiter ``url`` names; ``clock`` only applies to the in-memory one, the rest only
    to Valkey (bucket keys are ``<key_prefix>rl:...``; ``client``, from :func:`shared_client`,
    is the process's one pool, else the limiter opens its own)."""
    valkey = valkey_url(url, "rate-limit backend")
    if valkey is None:
        return MemoryRateLimiter(clock)
    backend = client or valkey_client(valkey, timeout=timeout_ms / 1000)
    return ValkeyRateLimiter(backend, prefix=key_prefix + "rl:")


def shared_client(url: str, *, timeout_ms: int = 500) -> Valkey | None:
    """The one Valkey client (and pool) a gateway process gives its limiter and its approval
    store, or None for memory."""
    valkey = valkey_url(url, "rate-limit backend")
    return None if valkey is None else valkey_client(valkey, timeout=timeout_ms / 1000)


def valkey_url(url: str, what: str) -> str | None:
    """The Valkey URL ``url`` names (stripped), None for memory; a ValueError naming ``what``
    for anything else."""
    text = url.strip()
    if text in MEMORY:
        return None
    problem = backend_problem(text)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return text


def backend_problem(url: str) -> str | None:
    """Why ``url`` is not a usable backend (scheme, host, port, db, TLS options, CA files), or
    None. Valkey URLs are read exactly as the limiter will read them. A password in the URL
    never appears in the message."""
    if url in MEMORY:
        return None
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # (a password holding "[" or "]"): nothing of it can be shown
        return f"the backend URL does not read as a URL ({_EXPECTED})"

    def redact(text: str) -> str:
        return text.replace(password, "***") if password else text

    scheme = parts.scheme.lower()
    if scheme not in ("valkey", "valkeys", "unix"):
        return f"unknown backend {redact(url)!r} ({_EXPECTED})"
    if scheme != "unix" and not parts.hostname:
        return f"{redact(url)!r} has no host ({_EXPECTED})"
    try:
        check_url(url)
    except (ValueError, OSError, ValkeyError) as exc:
        return f"{redact(url)!r} is not a usable Valkey URL: {redact(str(exc))}"
    return None
