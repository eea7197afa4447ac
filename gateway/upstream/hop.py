"""Hop-by-hop headers (RFC 9110 7.6.1): the connection's own, never passed from one leg of
the relay to the other, whichever transport carries the upstream leg."""

from __future__ import annotations

from collections.abc import Container, Iterable

# The connection's own headers. ``expect``: the relay never waits for a 100 Continue.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Never taken from the caller: the relay frames each request itself.
OWN_HEADERS = HOP_BY_HOP | {"host", "content-length"}


def connection_named(values: Iterable[str]) -> set[str]:
    """The header names a ``Connection`` header lists: hop-by-hop for that message only."""
    return {token.strip().lower() for value in values for token in value.split(",")} - {""}


def is_hop_by_hop(name: str, named: Container[str] = ()) -> bool:
    """``name`` (lower case) belongs to the connection, not the message."""
    return name in HOP_BY_HOP or name.startswith("proxy-") or name in named
