"""The Valkey client the limiter and the approval store share: one pool per gateway process.

A ``limits.backend`` URL is read exactly as the ``valkey`` package reads it (host, port, Unix
socket, database, username, password, TLS and its ``ssl_*`` options, by its ``parse_url``).
:func:`valkey_client` is the one place a client is built, so a Sentinel or Cluster client
would be picked there by the URL's scheme. Foreign errors are mapped to the gateway's tree by
:func:`unavailable` where a caller meets them (``BACKEND_ERRORS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from valkey._parsers.url_parser import URL_QUERY_ARGUMENT_PARSERS
from valkey.asyncio import BlockingConnectionPool, Valkey
from valkey.asyncio.connection import SSLConnection, ValkeySSLContext, parse_url
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import AuthenticationError, NoPermissionError, ValkeyError
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from gateway.errors import BackendUnavailable

log = structlog.get_logger(__name__)

#: What a Valkey call can raise when the server is down, slow, refuses or answers an error.
BACKEND_ERRORS = (ValkeyError, OSError)


def unavailable(exc: BaseException) -> BackendUnavailable:
    """The gateway's error for a Valkey failure; names the kind, never the URL or password."""
    return BackendUnavailable(f"valkey: {type(exc).__name__}")


def valkey_client(
    url: str, *, timeout: float = 0.5, max_connections: int = 64, pool_wait: float = 5.0
) -> Valkey:
    """A client over a bounded pool with short timeouts and one retry on a broken connection.

    ``timeout`` bounds connecting and each reply (the handshake's too); waiting for a free
    pooled connection (``pool_wait``) is queueing behind other calls of a burst, not an
    outage, so it gets seconds. The retry is what makes a restart invisible: the first command
    on a stale pooled connection fails, the connection is dropped, the retry opens a fresh
    one. Timeouts are not retried (that would double the wait on a hung server). A retry after
    the server ran a script but before its reply arrived would run it twice; for a token
    bucket that errs on the strict side. Over TLS the server's name is checked against its
    certificate unless the URL says ``ssl_check_hostname=false``. No ``CLIENT SETINFO`` on
    connect: a new connection costs AUTH and SELECT only, and an ACL user needs no more.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(ValkeyConnectionError,)),
        retry_on_error=[ValkeyConnectionError],  # the client retries only what this lists
        lib_name=None,
        lib_version=None,
        **client_defaults(url),
    )
    return Valkey.from_pool(pool)


def client_defaults(url: str) -> dict[str, Any]:
    """Keyword arguments for ``from_url``: TLS settings a ``valkeys://`` URL gets unless it
    says otherwise (the certificate verified and, when it is, the server's name checked; the
    ``valkey`` package alone would not check the name)."""
    opts = parse_url(url)
    if opts.get("connection_class") is not SSLConnection:
        return {}
    cert_reqs = opts.get("ssl_cert_reqs", "required")
    return {"ssl_cert_reqs": cert_reqs, "ssl_check_hostname": cert_reqs != "none"}


#: The query options of a Valkey URL celgate takes: what the ``valkey`` package parses, and
#: the TLS ones its client builds a context from.
URL_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) | {
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_min_version",
    "ssl_ciphers",
    "client_name",
}


def check_url(url: str) -> None:
    """Raise ValueError (or the ``valkey`` package's errors, or OSError for a missing CA
    file) for a URL the client could not use; builds the TLS context it would build."""
    opts = parse_url(url)
    parts = urlsplit(url)
    unknown = sorted(set(parse_qs(parts.query, keep_blank_values=True)) - URL_OPTIONS)
    if unknown:  # a misspelt option (ssl_ca_cert=) would be passed on, and do nothing
        raise ValueError(f"unknown option {', '.join(unknown)}")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ValueError(f"the database must be a number, not {database!r}")
    if opts.get("connection_class") is SSLConnection:
        opts = {**client_defaults(url), **opts}
        ValkeySSLContext(
            keyfile=opts.get("ssl_keyfile"),
            certfile=opts.get("ssl_certfile"),
            cert_reqs=opts["ssl_cert_reqs"],
            ca_certs=opts.get("ssl_ca_certs"),
            ca_data=opts.get("ssl_ca_data"),
            check_hostname=opts["ssl_check_hostname"],
            min_version=opts.get("ssl_min_version"),
            ciphers=opts.get("ssl_ciphers"),
        ).get()


class Outage:
    """Logs a Valkey outage (the limiter's, the approval store's) as it starts, while it lasts
    and when it ends, not once per call: during an outage every call fails the same way, and
    each decision record already says so (``backend_error``, ``internal_error``). ``clock``
    and ``logger`` are injectable for tests."""

    REMIND = 30.0  # seconds between "still down" records

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
        component: str = "ratelimit",
    ) -> None:
        self.component = component  # the events' prefix: ratelimit, approvals
        self.clock = clock
        self.log = logger or log
        self.since: float | None = None  # when the current outage began
        self.calls = 0  # calls that failed in it
        self._reminded = 0.0
        self._last_error = ""

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        error, detail = type(exc).__name__, str(exc)
        self.calls += 1
        if self.since is None:
            self.since = self._reminded = now
            self._last_error = error
            self.log.error(f"{self.component}.backend_down", error=error, detail=detail)
        elif now - self._reminded >= self.REMIND or error != self._last_error:
            self._reminded = now
            self._last_error = error
            self.log.error(
                f"{self.component}.backend_still_down",
                error=error,
                detail=detail,
                down_s=round(now - self.since, 1),
                failed_calls=self.calls,
            )

    def recovered(self) -> None:
        assert self.since is not None
        self.log.warning(
            f"{self.component}.backend_recovered",
            down_s=round(self.clock() - self.since, 1),
            failed_calls=self.calls,
        )
        self.since = None
        self.calls = 0


async def check_access(client: Any) -> bool:
    """Log, at start, a Valkey that refuses this gateway's connections (its user, its
    password, or a database other than 0 its ACL may not ``SELECT``): every limited and
    every held call would be refused, and only their refusals told why (red-team wave 70).
    Whether it answered; one that is down for now is only warned of."""
    try:
        await client.time()  # (a command the documented rights allow: PING is not among them)
    except (NoPermissionError, AuthenticationError) as exc:
        log.error("limits.valkey_refused", error=type(exc).__name__, detail=str(exc)[:300],
                  fix="give the user the rights docs/deploy.md names (+select for a "
                  "database other than 0), or its password")  # fmt: skip
        return False
    except (ValkeyError, OSError) as exc:
        log.warning("limits.valkey_unreachable", error=type(exc).__name__)
        return False
    return True


async def check_eviction(client: Any) -> None:
    """Log, at start, a Valkey that may evict keys under memory pressure: a bucket evicted is
    a full one (a drained budget refilled), an approval's single-use mark evicted lets the
    approval run again. Only ``maxmemory-policy noeviction`` keeps them (docs/deploy.md).
    A server that does not answer ``CONFIG GET`` (a managed one) is logged as unchecked."""
    try:
        answer = await client.config_get("maxmemory-policy")
    except Exception as exc:  # refused (ACL, a managed service), or down: say so, go on
        log.warning("limits.eviction_unchecked", error=type(exc).__name__,
                    fix="make sure Valkey's maxmemory-policy is noeviction")  # fmt: skip
        return
    policy = answer.get("maxmemory-policy") if isinstance(answer, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode(errors="replace")
    if policy != "noeviction":
        log.error(
            "limits.valkey_evicts",
            maxmemory_policy=policy,
            fix="set maxmemory-policy noeviction: an evicted bucket is a refilled one, an "
            "evicted approval mark lets an approved call run again",
        )


#: How far a replica's clock may be from Valkey's before start says so: approvals, in-band
#: once-marks and console sessions are stamped and judged by each replica's own clock.
MAX_CLOCK_SKEW_SECONDS = 1.0


async def check_clock(client: Any, clock: Callable[[], float] = time.time) -> float | None:
    """Log, at start, a replica whose clock is more than ``MAX_CLOCK_SKEW_SECONDS`` from
    Valkey's (``limits.clock_skew``): an approval given on a replica an hour ahead stayed
    usable for that hour on the others (red-team wave 58). The skew in seconds, or None when
    Valkey did not tell its time (``limits.clock_unchecked``)."""
    try:
        seconds, micros = await client.time()
    except (ValkeyError, OSError) as exc:  # refused (ACL without +time), or down: go on
        log.warning("limits.clock_unchecked", error=type(exc).__name__,
                    fix="keep every replica's clock in sync with Valkey's (NTP)")  # fmt: skip
        return None
    skew = clock() - (int(seconds) + int(micros) / 1_000_000)
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        log.error(
            "limits.clock_skew",
            skew_s=round(skew, 3),
            fix="keep every replica's clock in sync (NTP): approvals, in-band approvals and "
            "console sessions are timed by each replica's own clock",
        )
    return skew
