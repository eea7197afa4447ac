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
    never appears in the message, however badly it is written."""
    if url in MEMORY:
        return None
    try:
        parts = urlsplit(url)
        parts.password  # noqa: B018 (a password holding "[" or "]" raises here)
    except ValueError:  # nothing of it can be shown
        return f"the backend URL does not read as a URL ({_EXPECTED})"
    scheme = parts.scheme.lower()
    if scheme not in ("valkey", "valkeys", "unix"):
        return f"unknown backend {shown_backend(url)!r} ({_EXPECTED})"
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:  # cut short: its words
        return f"{shown_backend(url)!r} is not a usable Valkey URL: {_ESCAPED}"  # are secret
    if scheme != "unix" and not parts.hostname:
        return f"{shown_backend(url)!r} has no host ({_EXPECTED})"
    try:
        check_url(url)
    except (ValueError, OSError, ValkeyError) as exc:
        why = _without_secrets(str(exc), url)
        return f"{shown_backend(url)!r} is not a usable Valkey URL: {why}"
    return None


_ESCAPED = "a /, ? or # in a password must be percent-encoded"


def shown_backend(url: str) -> str:
    """``url`` as a message may show it: whatever stands before its last ``@`` after the
    scheme (a user, a password, however written) is ``***``. A password holding a raw ``/``,
    ``?`` or ``#`` (as ``openssl rand -base64`` makes) cuts the URL's authority short, so the
    parsed password was none and the whole URL was shown (red-team wave 39)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _without_secrets(text: str, url: str) -> str:
    """``text`` with the user information of ``url`` (and either part of it) replaced."""
    secret = urlsplit(url).netloc.rpartition("@")[0]
    for part in sorted({secret, *secret.split(":", 1)}, key=len, reverse=True):
        if part:
            text = text.replace(part, "***")
    return text
