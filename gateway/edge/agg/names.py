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
#: Names of a server with an empty prefix remembered for routing, at most, of each kind (its
#: own least recently listed are forgotten first: one table for all let one server's flood
#: of prompts push out another's tool, then list that tool as its own and take its calls,
#: arguments and all, red-team wave 70); a name no call could use (too long, control
#: characters) is not learned. Ambiguous names are kept up to the same number.
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
        #: Each server's names of each kind in ``_owner``, least recently listed first.
        self._owned: dict[tuple[str, str], dict[str, None]] = {}
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
        collided: set[str] = set()
        for server, name in listed:
            if self.prefixes[server] or (kind, name) in self.ambiguous:
                continue
            if len(name) > MAX_TOOL_NAME or not visible(name):
                continue  # no caller could name it (edge/toolnames): nothing to route
            other = seen.setdefault(name, server)
            if other == server:  # a name owned already (learned from an earlier page) counts
                other = self._owner.get((kind, name), server)
            if other != server:
                if len(self.ambiguous) < MAX_OWNED_NAMES:  # (past it: owned by neither)
                    self.ambiguous.add((kind, name))
                collided.add(name)
                self._disown(kind, name)
                log.error(
                    "aggregate.name_collision",
                    kind=kind,
                    name=name[:128],
                    servers=[other, server],
                    fix="give one of them a prefix (servers.<name>.prefix)",
                )
        for name, server in seen.items():
            if name in collided or (kind, name) in self.ambiguous:
                continue
            if self._owner.get((kind, name), server) != server:
                continue
            self._owner[(kind, name)] = server
            mine = self._owned.setdefault((server, kind), {})
            mine.pop(name, None)  # learned again: the newest
            mine[name] = None
            while len(mine) > MAX_OWNED_NAMES:  # its own least recently listed go first
                oldest = next(iter(mine))
                del mine[oldest]
                self._owner.pop((kind, oldest), None)

    def _disown(self, kind: str, name: str) -> None:
        owner = self._owner.pop((kind, name), None)
        if owner is not None:
            self._owned.get((owner, kind), {}).pop(name, None)
