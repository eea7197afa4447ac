"""Names on ``/mcp``: ``<prefix><sep><name>`` for tools and prompts, the prefix being the
server's name unless its config sets another (an empty one leaves names as they are).

Routing a name back goes by the longest non-empty prefix that fits (the config refuses a
prefix that begins with another's and the separator); a name no prefix fits goes to the
server with an empty prefix, or, when several have one, to the server that listed it (learned
from each server's whole list, never from what one caller may see). A name two servers with
an empty prefix both list, on the same page or on any two pages read at any time, is
ambiguous from then on: it is shown to nobody and routed nowhere, and each one is logged once
(``aggregate.name_collision``), so one server's new tool cannot take another's calls, nor
take the list down for everyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from gateway.edge.toolnames import MAX_TOOL_NAME
from gateway.printable import visible

log = structlog.get_logger(__name__)
#: Names of servers with an empty prefix remembered for routing, at most (of every kind); a
#: name no call could use (too long, control characters) is not learned.
MAX_OWNED_NAMES = 100_000


class Names:
    """Prefixes per server and what each listed name belongs to."""

    def __init__(self, prefixes: Mapping[str, str], sep: str) -> None:
        self.sep = sep
        self.prefixes = dict(prefixes)
        # Non-empty prefixes longest first: ``a.b__x`` must not be taken by server ``a``.
        self._ordered = sorted(
            ((p + sep, s) for s, p in self.prefixes.items() if p), key=lambda t: -len(t[0])
        )
        self._bare = [s for s, p in self.prefixes.items() if not p]
        self._owner: dict[tuple[str, str], str] = {}
        self.ambiguous: set[tuple[str, str]] = set()

    def outward(self, server: str, name: str) -> str:
        prefix = self.prefixes[server]
        return prefix + self.sep + name if prefix else name

    def inward(self, kind: str, name: str) -> tuple[str, str] | None:
        """(server, its own name) for a name on ``/mcp``, or None when nothing fits."""
        for head, server in self._ordered:
            if name.startswith(head) and len(name) > len(head):
                return server, name[len(head) :]
        if (kind, name) in self.ambiguous:
            return None
        owner = self._owner.get((kind, name))
        if owner is not None:
            return owner, name
        if len(self._bare) == 1:
            return self._bare[0], name
        return None

    def learn(self, kind: str, listed: Iterable[tuple[str, str]]) -> None:
        """Record who owns each name of the servers with an empty prefix, from (server,
        outward name) pairs of one page of their lists; a name two of them list (here, or
        one here and the other on a page learned before) is ambiguous for good."""
        seen: dict[str, str] = {}
        for server, name in listed:
            if self.prefixes[server] or (kind, name) in self.ambiguous:
                continue
            if len(name) > MAX_TOOL_NAME or not visible(name):
                continue  # no caller could name it (edge/toolnames): nothing to route
            other = seen.setdefault(name, server)
            if other == server:  # a name owned already (learned from an earlier page) counts
                other = self._owner.get((kind, name), server)
            if other != server:
                self.ambiguous.add((kind, name))
                self._owner.pop((kind, name), None)
                log.error(
                    "aggregate.name_collision",
                    kind=kind,
                    name=name[:128],
                    servers=[other, server],
                    fix="give one of them a prefix (servers.<name>.prefix)",
                )
        for name, server in seen.items():
            if (kind, name) not in self.ambiguous:
                self._owner.pop((kind, name), None)  # learned again: the newest
                self._owner[(kind, name)] = server
        while len(self._owner) > MAX_OWNED_NAMES:  # the least recently listed go first
            del self._owner[next(iter(self._owner))]
        while len(self.ambiguous) > MAX_OWNED_NAMES:
            self.ambiguous.pop()
