"""Names on ``/mcp``: ``<prefix><sep><name>`` for tools and prompts, the prefix being the
server's name unless its config sets another (an empty one leaves names as they are).

Routing a name back goes by the longest non-empty prefix that fits; a name no prefix fits goes
to the server with an empty prefix, or, when several have one, to the server that listed it
(the catalogue, learned from lists). Two servers listing the same name is a ``Collision``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class Collision(Exception):
    """Two servers would show the same name on ``/mcp``."""

    def __init__(self, kind: str, name: str, servers: tuple[str, str]) -> None:
        first, second = servers
        super().__init__(
            f"{kind} name {name!r} on /mcp is both servers.{first}'s and servers.{second}'s: "
            f"give one of them a prefix (servers.<name>.prefix)"
        )


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

    def outward(self, server: str, name: str) -> str:
        prefix = self.prefixes[server]
        return prefix + self.sep + name if prefix else name

    def inward(self, kind: str, name: str) -> tuple[str, str] | None:
        """(server, its own name) for a name on ``/mcp``, or None when nothing fits."""
        for head, server in self._ordered:
            if name.startswith(head) and len(name) > len(head):
                return server, name[len(head) :]
        owner = self._owner.get((kind, name))
        if owner is not None:
            return owner, name
        if len(self._bare) == 1:
            return self._bare[0], name
        return None

    def learn(self, kind: str, listed: Iterable[tuple[str, str]]) -> None:
        """Record (server, outward name) pairs of one merged list; refuse a collision."""
        seen: dict[str, str] = {}
        for server, name in listed:
            other = seen.setdefault(name, server)
            if other != server:
                raise Collision(kind, name, (other, server))
        for name, server in seen.items():
            if not self.prefixes[server]:
                self._owner[(kind, name)] = server
