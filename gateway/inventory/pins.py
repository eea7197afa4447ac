"""Tool pinning: a digest of each tool's definition, so a server cannot quietly change a tool.

The digest covers the definition clients act on: name, title, description, input and output
schemas, annotations, execution, icons and ``_meta`` (canonical JSON, ``None`` dropped). Pins
live in a YAML file the operator commits (``celgate pins update`` writes it).
A tool whose definition differs from its pin is refused until it is re-pinned, or unless the
config accepts changes. A tool with no pin is pinned in memory when first seen (trust on first
use) and logged; ``celgate pins update`` makes that permanent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError, Problem, SourceLocation
from gateway.telemetry.audit import log

#: What a tool's digest covers: every field of a tool definition that clients act on. The
#: title names it to users and models, the output schema checks its results, ``execution``
#: says how it runs (tasks), icons and ``_meta`` (an MCP Apps page, ``ui.resourceUri``)
#: are shown or rendered; a server changed any of those unseen under a pin of the first four
#: (red-team wave 58). A field left out is not digested: a pin of a tool that has none of the
#: later ones is the same as before they were.
_FIELDS = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
    "execution",
    "icons",
    "_meta",
)
#: The keys of the objects the SDK's client reads by a model (the catalogue's first sight),
#: which leaves any other key out: a list shows them raw, and an upstream's own key in one
#: gave that list another digest than the catalogue's, a false change.
_KNOWN_KEYS = {
    "annotations": frozenset(
        {"title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
    ),
    "execution": frozenset({"taskSupport"}),
    "icons": frozenset({"src", "mimeType", "sizes", "theme"}),
}
#: The gateway's own ``_meta`` keys: it sets them on every tool it lists (a server's are
#: replaced), so they are no part of the server's definition.
_OWN_META = "io.celgate"
#: Tools of one server pinned in memory on first sight, at most: an upstream renaming its
#: tools on every list would otherwise grow the pins without bound. Past it, a tool of that
#: server with no pin is refused (it cannot be pinned, so a change to it could not be seen:
#: 20,000 junk names, then a real tool, and its later changes ran unseen, red-team wave 42).
MAX_FIRST_SEEN = 20_000


#: A tool definition nested deeper than this (objects and lists) is left out of every list
#: and every reading: each is walked by functions that recurse (digest, classification,
#: argument shapes), and one server's tool of 700 levels made ``tools/list`` fail with an
#: internal error, on ``/mcp`` for every server (red-team wave 37).
MAX_DEFINITION_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_DEFINITION_DEPTH) -> bool:
    """Whether ``value`` holds objects or lists nested deeper than ``limit`` (walked without
    recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        # What JSON gives is a dict or a list exactly: a list of 15,000 numbers is told none
        # at C speed (1,000 such tools took 5.7 s, walked one by one: red-team wave 50).
        if _CONTAINERS.isdisjoint(map(type, children)):
            continue
        below = depth + 1
        stack += [(child, below) for child in children if isinstance(child, dict | list)]
    return False


_CONTAINERS = frozenset({dict, list})


def unreadable_definition(name: str) -> dict[str, Any]:
    """What the pins are shown for a tool whose definition is left out (``too_deep``): a
    definition of its own, so a pinned tool changed into one is a change, refused, and one
    first seen so is pinned as such. An upstream that turned a pinned tool's definition
    into one nested too deep changed it unseen: the pins were never shown it, and calls ran
    the new tool (red-team wave 38)."""
    return {"name": name, "inputSchema": {"x-celgate": "definition nested too deep to read"}}


def _clean(value: Any) -> Any:
    """``None`` dropped from objects; a number past a double's range (``1e999``, read as
    infinity) is ``None`` too: the SDK's client (the catalogue's first sight) writes it so,
    and the same definition seen on a list had another digest: a false rug-pull, every list."""
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _known(field: str, value: Any) -> Any:
    """``value`` of ``field`` as the SDK's model keeps it (see ``_KNOWN_KEYS``)."""
    keys = _KNOWN_KEYS.get(field)
    if field == "_meta" and isinstance(value, dict):
        return {k: v for k, v in value.items() if not str(k).startswith(_OWN_META)}
    if keys is None:
        return value
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in keys}
    if field == "icons" and isinstance(value, list):
        return [
            {k: v for k, v in i.items() if k in keys} if isinstance(i, dict) else i for i in value
        ]
    return value


def tool_digest(tool: Mapping[str, Any]) -> str:
    """sha256 of the tool's definition as the wire shows it (camelCase field names)."""
    picked = {k: _clean(_known(k, tool.get(k))) for k in _FIELDS}
    picked = {k: v for k, v in picked.items() if v not in (None, {}, "")}
    canonical = json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (valid JSON, no UTF-8) still has a digest of its own
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


#: What a change says was seen of a pinned tool a cut reading did not reach.
UNREAD = "unread"


@dataclass(frozen=True, slots=True)
class Change:
    """A pinned tool seen with another definition: ``seen`` the last one that differed,
    ``latest`` the last one seen at all (the pinned one again, after a revert)."""

    pinned: str
    seen: str
    latest: str
    #: Made by a pins file read again, not by a listing: the pin is ahead of what was last
    #: seen (a server upgraded and pinned before anyone listed it), and a listing that shows
    #: the pin ends it.
    ahead: bool = False


@dataclass
class Pins:
    """Pinned digests per (server, tool), what changed, and where the file is.

    A change stays until the operator pins what the server now shows (``celgate pins update``
    and a reload): an upstream that shows the pinned definition again, once more in the same
    list, on a later page or in any other answer, does not reopen the tool it changed.
    """

    path: Path | None = None
    accept_changes: bool = False
    pinned: dict[tuple[str, str], str] = field(default_factory=dict)
    changed: dict[tuple[str, str], Change] = field(default_factory=dict)
    source: str = ""  # a digest of the file as last read: a reload of the same file is no news
    first_seen: dict[str, int] = field(default_factory=dict)  # pins held in memory, per server
    #: The digest each pinned tool was last seen with (checked against pins read again).
    last_seen: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, accept_changes: bool = False) -> Pins:
        """The pins file's pins (none when the file is not there yet: ``celgate pins update``
        writes it). A file that cannot be read or is not a pins file (a merge left conflict
        markers in it, a FIFO or a link to nothing in its place) raises ConfigError with
        file:line, at start or on reload (where the pins held keep serving)."""
        pins = cls(path, accept_changes)
        if path is None or not (path.exists() or path.is_symlink()):
            return pins
        raw = _read_pins_file(path)
        pins.source = hashlib.sha256(raw).hexdigest()
        for (server, tool), digest in _pins_in(path, raw).items():
            pins.pinned[(server, tool)] = digest
        return pins

    def observe(self, server: str, tool: Mapping[str, Any]) -> str:
        """Compare a tool definition seen on the wire with its pin: new, same or changed."""
        name = str(tool.get("name", ""))
        key = (server, name)
        digest = tool_digest(tool)
        pinned = self.pinned.get(key)
        if pinned is None:
            first = self.first_seen.get(server, 0)
            if first >= MAX_FIRST_SEEN:  # a pin of the file, or one held, is never let go
                return "new"  # but a server past so many new names gets no more (refusal)
            self.first_seen[server] = first + 1
            self.pinned[key] = digest
            self.last_seen[key] = digest
            log.debug("pins.first_seen", server=server, tool=name, digest=digest)
            return "new"
        self.last_seen[key] = digest
        change = self.changed.get(key)
        if pinned != digest:
            if change is None or change.seen != digest:
                log.warning("pins.changed", server=server, tool=name, pinned=pinned, seen=digest)
            # still the definition the pin is ahead of (a process not yet restarted): ahead
            ahead = change is not None and change.ahead and digest == change.seen
            self.changed[key] = Change(pinned, digest, digest, ahead=ahead)
            return "changed"
        if change is None:
            return "same"
        if change.ahead:  # the server now shows what the file pins: nothing changed
            del self.changed[key]
            return "same"
        self.changed[key] = Change(pinned, change.seen, digest)
        return "changed"

    def repinned(self, fresh: Pins) -> None:
        """Take the pins file as read again: when it changed (``celgate pins update`` writes
        it anew every time), a changed tool whose new pin is a definition it was seen with is
        trusted again (the next listing checks it once more). A tool last seen with another
        definition than its new pin is refused at once (a pins file rolled back to the
        reviewed one ran the unreviewed definition until some caller listed tools, red-team
        wave 35). The same file read again (a reload of the rules) trusts nothing again."""
        if fresh.source == self.source:
            return
        self.source = fresh.source
        self.pinned.update(fresh.pinned)
        for key, digest in fresh.pinned.items():
            change = self.changed.get(key)
            if change is not None and digest in (change.seen, change.latest):
                del self.changed[key]
                continue
            seen = self.last_seen.get(key)
            if seen is None or seen == digest:
                continue
            if change is None:
                server, tool = key
                log.warning("pins.changed", server=server, tool=tool, pinned=digest, seen=seen)
                self.changed[key] = Change(digest, seen, seen, ahead=True)
            else:
                self.changed[key] = Change(digest, change.seen, seen, ahead=change.ahead)

    def unread(self, server: str, read: set[str]) -> int:
        """A reading of ``server``'s tools was cut (past 5,000 tools, 200 pages, 32 MiB):
        each pinned tool it did not reach is refused until a listing shows its pinned
        definition (as a pin ahead of what was seen). A server that padded its list past the
        cut changed a pinned tool unseen, and calls ran the new definition (red-team wave
        40). How many were marked."""
        marked = 0
        for key, pinned in self.pinned.items():
            if key[0] != server or key[1] in read or key in self.changed:
                continue
            self.changed[key] = Change(pinned, UNREAD, UNREAD, ahead=True)
            marked += 1
        if marked:
            log.warning("pins.unread", server=server, tools=marked)
        return marked

    def refusal(self, server: str, tool: str) -> str | None:
        """Why a call must be refused (the definition changed), or None."""
        if self.accept_changes:
            return None
        change = self.changed.get((server, tool))
        if change is None:
            if self.first_seen.get(server, 0) >= MAX_FIRST_SEEN and (
                (server, tool) not in self.pinned
            ):
                return (
                    f"{server} has shown more than {MAX_FIRST_SEEN} tools; {server}/{tool} has "
                    "no pin and none can be held for it, so it is refused (pin it: "
                    "`celgate pins update`)"
                )
            return None
        if change.seen == UNREAD:
            return (
                f"the definition of {server}/{tool} was not in the server's last reading (its "
                "list was cut); it is refused until a listing shows the pinned one"
            )
        if change.ahead:
            return (
                f"the definition of {server}/{tool} last seen ({change.seen[:19]}…) is not "
                f"the one pinned ({change.pinned[:19]}…); it is refused until the server "
                "shows the pinned one (a listing of its tools), or `celgate pins update`"
            )
        return (
            f"the definition of {server}/{tool} changed since it was pinned "
            f"(pinned {change.pinned[:19]}…, now {change.seen[:19]}…); "
            "an operator must review it and run `celgate pins update`"
        )


def write_pins(path: Path, tools: Mapping[str, list[dict[str, Any]]]) -> int:
    """Write the pins file from the tools each server lists now; returns how many were pinned."""
    servers = {
        server: {str(t["name"]): tool_digest(t) for t in sorted(items, key=lambda t: t["name"])}
        for server, items in sorted(tools.items())
    }
    header = "# celgate tool pins: `celgate pins update` rewrites this file. Commit it.\n"
    header += f"# updated {datetime.now(UTC).isoformat(timespec='seconds')}\n"  # new each time
    text = header + yaml.safe_dump({"servers": servers}, sort_keys=True)
    # Written beside it and renamed into place: a gateway watching the file (hot reload)
    # never reads it half written. Raises OSError when the folder cannot take it.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return sum(len(v) for v in servers.values())


#: A pins file holds a line per tool: tens of thousands fit well under this.
MAX_PINS_BYTES = 16 * 1024 * 1024


def _refused(path: Path, line: int, message: str) -> ConfigError:
    return ConfigError([Problem(SourceLocation(str(path), line), "pins", message)])


def _read_pins_file(path: Path) -> bytes:
    """The file's bytes, opened without blocking (a FIFO in its place held the whole gateway
    at reload), from a regular file only, at most ``MAX_PINS_BYTES``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refused(path, 1, "cannot read: not a regular file")
            raw = file.read(MAX_PINS_BYTES + 1)
    except OSError as exc:
        raise _refused(path, 1, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_PINS_BYTES:
        raise _refused(path, 1, f"cannot read: larger than {MAX_PINS_BYTES} bytes")
    return raw


def _pins_in(path: Path, raw: bytes) -> dict[tuple[str, str], str]:
    """``servers: {<server>: {<tool>: <digest>}}``, every key and digest a string."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        why = getattr(exc, "problem", None) or exc
        raise _refused(path, line, f"not a pins file: {why}") from None
    except (ValueError, RecursionError):
        raise _refused(path, 1, "not a pins file") from None
    if data is None:
        return {}
    servers = data.get("servers") if isinstance(data, dict) else None
    if servers is None and isinstance(data, dict) and "servers" not in data:
        return {}
    if not isinstance(servers, dict):
        raise _refused(path, 1, "not a pins file: `servers:` must map servers to their tools")
    out: dict[tuple[str, str], str] = {}
    for server, tools in servers.items():
        if tools is None:
            continue
        if not isinstance(tools, dict):
            raise _refused(path, 1, f"not a pins file: servers.{server} must map tools to pins")
        for tool, digest in tools.items():
            if not isinstance(digest, str):
                msg = f"not a pins file: servers.{server}.{tool} must be a digest"
                raise _refused(path, 1, msg)
            out[(str(server), str(tool))] = digest
    return out
