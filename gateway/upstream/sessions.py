"""The handshake-era sessions callers hold on one Streamable HTTP upstream through the relay.

The relay keeps no state of its own per session (the id it hands out is the upstream's,
signed), so nothing bounded how many sessions one agent made an upstream hold: one agent
opened 3,000 and never ended them (red-team wave 33), and the upstream kept them all. Now
each replica counts the sessions it sees per caller (``Identity.owner``: the grant and the
agent), made here or presented here, and:

- past ``servers.X.max_sessions_per_grant`` for one caller, its least recently used session
  is ended (a DELETE upstream) and forgotten: a caller that never ends its sessions loses
  its oldest one, and only its own;
- past ``servers.X.max_sessions`` in all, a new session is refused to a caller that holds
  none to give up (503): the upstream's memory is bounded by the operator's number.

A session ended here is answered 404 ("Session not found") when presented again, as the
upstream itself answers an ended one, so a client opens another. The count is per replica.
"""

from __future__ import annotations

from collections import OrderedDict

#: Sessions ended here, remembered so that one presented again is not counted anew.
MAX_ENDED = 16384

Key = tuple[str, str]  # (owner, the upstream's session id)


class SessionTable:
    """Sessions by caller, least recently used first."""

    def __init__(self, max_sessions: int, max_per_owner: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._count = 0
        self._ended: OrderedDict[Key, None] = OrderedDict()

    @property
    def count(self) -> int:
        return self._count

    def held_by(self, owner: str) -> int:
        held = self._by_owner.get(owner)
        return 0 if held is None else len(held)

    def full_for(self, owner: str) -> bool:
        """Whether a new session of ``owner``'s would be past ``max_sessions`` with none of
        its own to give up."""
        return self._count >= self.max_sessions and not self.held_by(owner)

    def was_ended(self, owner: str, sid: str) -> bool:
        return (owner, sid) in self._ended

    def used(self, owner: str, sid: str) -> list[str]:
        """A session made or presented now: most recently used. Returns the sessions of
        ``owner`` ended to make room (the upstream is to be told)."""
        held = self._by_owner.get(owner)
        if held is None:
            held = self._by_owner[owner] = OrderedDict()
        if sid in held:
            held.move_to_end(sid)
            return []
        held[sid] = None
        self._count += 1
        ended: list[str] = []
        while len(held) > self.max_per_owner or (self._count > self.max_sessions and len(held) > 1):
            old, _ = held.popitem(last=False)
            self._count -= 1
            self._remember(owner, old)
            ended.append(old)
        return ended

    def ended(self, owner: str, sid: str) -> None:
        """The session is over (its client's DELETE, or the upstream no longer knows it)."""
        held = self._by_owner.get(owner)
        if held is not None and held.pop(sid, 0) is None:
            self._count -= 1
            if not held:
                del self._by_owner[owner]

    def _remember(self, owner: str, sid: str) -> None:
        self._ended[(owner, sid)] = None
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)
