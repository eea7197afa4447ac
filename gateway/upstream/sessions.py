"""The handshake-era sessions callers hold on one Streamable HTTP upstream through the relay.

The relay keeps no state of its own per session (the id it hands out is the upstream's,
signed), so nothing bounded how many sessions one agent made an upstream hold: one agent
opened 3,000 and never ended them (red-team wave 33), and the upstream kept them all. Now
each replica counts the sessions it sees per caller (``Identity.owner``: the grant and the
agent), made here or presented here:

- a new session past ``servers.X.max_sessions_per_grant`` for one caller ends that caller's
  own least recently used session idle for ``GIVE_WAY_SECONDS`` (nothing in progress, no
  stream open), else is refused (429); past ``servers.X.max_sessions`` in all it is refused
  (503): no session in use is ever ended to make room (one that was broke its client's
  running call, and neither SDK opens another). The TypeScript SDK and the Inspector never
  end their sessions (no DELETE): an agent using them was refused every new session once
  it had opened its cap's worth within ``session_idle`` (red-team wave 39);
- a session with no request for ``servers.X.session_idle`` seconds (none in progress, no
  stream open) is ended upstream (a DELETE) and no longer counted, as a stdio server's
  sessions end after their ``idle_timeout``: a client that left its sessions behind (a
  crash, or a client that never sends DELETE) does not hold its places for good.

A session its client ends (DELETE), or that its upstream no longer knows (404), gives its
place back at once. The count is per replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, str]  # (owner, the upstream's session id)

#: How long a caller's session must have been idle (nothing in progress, no stream open) to
#: give way to the same caller's new one at its cap: one just opened, whose client has not
#: yet sent its next request, keeps its place.
GIVE_WAY_SECONDS = 10.0


@dataclass(slots=True)
class _Use:
    last: float  # when a request last began or ended on it
    busy: int = 0  # requests (streams included) in progress on it


class SessionTable:
    """Sessions by caller, least recently used first."""

    def __init__(
        self,
        max_sessions: int,
        max_per_owner: int,
        idle: float,
        clock: Callable[[], float] = time.monotonic,
        give_way: float = GIVE_WAY_SECONDS,
    ) -> None:
        self.give_way_after = give_way
        self.max_sessions = max_sessions
        self.max_per_owner = min(max_per_owner, max_sessions)
        self.idle = idle
        self.clock = clock
        self._uses: OrderedDict[Key, _Use] = OrderedDict()
        self._per_owner: dict[str, int] = {}
        #: Sessions being made (an ``initialize`` sent, not yet answered), by caller: each
        #: holds its place. Counted only once made, 60 initializes sent at once all passed a
        #: cap of 5 (red-team wave 39).
        self._making: dict[str, int] = {}

    @property
    def count(self) -> int:
        return len(self._uses)

    def held_by(self, owner: str) -> int:
        return self._per_owner.get(owner, 0)

    def refusal(self, owner: str) -> tuple[int, str] | None:
        """Why a new session of ``owner``'s may not be made now (status, the setting), or
        None when it may."""
        if self._placed(owner) >= self.max_per_owner:
            return 429, "max_sessions_per_grant"
        if self.count + sum(self._making.values()) >= self.max_sessions:
            return 503, "max_sessions"
        return None

    def _placed(self, owner: str) -> int:
        return self.held_by(owner) + self._making.get(owner, 0)

    def making(self, owner: str) -> None:
        """A session of ``owner``'s is being made: its place is held until ``made``."""
        self._making[owner] = self._making.get(owner, 0) + 1

    def made(self, owner: str) -> None:
        """The session ``making`` held a place for is made (then ``opened``) or not."""
        _one_less(self._making, owner)

    def give_way(self, owner: str) -> str | None:
        """At ``owner``'s cap: its least recently used session idle ``give_way`` seconds,
        no longer counted (the upstream is to be told), or None."""
        if self._placed(owner) < self.max_per_owner:
            return None
        now = self.clock()
        for key, use in self._uses.items():
            if now - use.last < self.give_way_after:
                return None  # least recently used first: the rest are younger
            if key[0] == owner and not use.busy:
                del self._uses[key]
                self._forget(owner)
                return key[1]
        return None

    def began(self, owner: str, sid: str) -> None:
        """A request (or stream) begins on a session made or presented here."""
        key = (owner, sid)
        use = self._uses.get(key)
        if use is None:
            use = self._uses[key] = _Use(self.clock())
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        use.busy += 1
        use.last = self.clock()
        self._uses.move_to_end(key)

    def done(self, owner: str, sid: str) -> None:
        """A request (or stream) on it is over."""
        use = self._uses.get((owner, sid))
        if use is not None:
            use.busy = max(use.busy - 1, 0)
            use.last = self.clock()
            self._uses.move_to_end((owner, sid))

    def opened(self, owner: str, sid: str) -> None:
        """A session made here (its ``initialize`` answered)."""
        self.began(owner, sid)
        self.done(owner, sid)

    def ended(self, owner: str, sid: str) -> None:
        """The session is over (its client's DELETE, or the upstream no longer knows it)."""
        if self._uses.pop((owner, sid), None) is not None:
            self._forget(owner)

    def idle_ones(self) -> list[Key]:
        """The sessions idle past ``idle`` (nothing in progress), no longer counted: the
        upstream is to be told."""
        now, out = self.clock(), []
        for key, use in list(self._uses.items()):
            if now - use.last < self.idle:
                break  # least recently used first: the rest are younger
            if use.busy:
                continue
            del self._uses[key]
            self._forget(key[0])
            out.append(key)
        return out

    def _forget(self, owner: str) -> None:
        _one_less(self._per_owner, owner)


def _one_less(counts: dict[str, int], owner: str) -> None:
    """One fewer for ``owner``; none left, no entry."""
    left = counts.get(owner, 0) - 1
    if left > 0:
        counts[owner] = left
    else:
        counts.pop(owner, None)
