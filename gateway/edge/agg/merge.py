"""What ``/mcp`` makes of several servers' answers: one list page (with a cursor that carries
each server's own), one set of capabilities, one ``server/discover`` result. Both eras use it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from gateway.auth.guard import SessionSigner
from gateway.edge.agg.gate import FIRST_SECONDS, MOST_SECONDS, Gate
from gateway.edge.agg.names import Names
from gateway.edge.clientview import MAX_LISTED_TOOLS, ClientView, any_id, readable
from gateway.edge.shapes import well_formed_items
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Send, reply
from gateway.wire.jsonrpc import BadMessage, Message, json_bytes

log = structlog.get_logger(__name__)

#: What each merged list holds, by method: the result's key and the kind of name it carries.
LISTS: dict[str, tuple[str, str | None]] = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", None),
    "resources/templates/list": ("resourceTemplates", None),
}
#: One server's cursor kept in a merged cursor at most, and a merged cursor taken back at
#: most (every server's, base64, sealed: a few hundred servers' worth).
MAX_SERVER_CURSOR = 4096
MAX_CURSOR_CHARS = 2 * 1024 * 1024
_CURSOR = "cursor\x00"  # what a list cursor's MAC binds besides the list and the caller
MAX_OWNED = 100_000  # resource URIs remembered for routing, per server (its oldest go first)
MAX_TEMPLATES = 10_000  # URI templates' literal heads, likewise
#: A URI no server is known to have makes ``/mcp`` read every server's resource lists again,
#: at most every ``RELEARN_SECONDS``, doubled while readings learn nothing new, up to
#: ``RELEARN_MAX_SECONDS`` (as ``tools/list`` on unknown tool names): URIs come from callers,
#: and each made-up one re-read every server's whole lists.
RELEARN_SECONDS = FIRST_SECONDS
RELEARN_MAX_SECONDS = MOST_SECONDS
MAX_URI_CHARS = 4096  # a longer URI (or head) is not learned: /mcp cannot route to it
#: The capabilities ``/mcp`` can serve for the servers behind it (``tasks`` is not routed).
SERVED_CAPABILITIES = ("tools", "prompts", "resources", "logging", "completions")
#: ... and in the 2026-07-28 era (no ``logging/setLevel``, no tasks, no extension: a server's
#: ``io.modelcontextprotocol/tasks`` was offered on ``/mcp``, where ``tasks/*`` is 404).
SERVED_CAPABILITIES_MODERN = ("tools", "prompts", "resources", "completions")
#: What one capability of a server's may weigh (bytes of JSON) in what ``/mcp`` tells a
#: client: past it the capability is told without its details (``{}``).
MAX_CAPABILITY_BYTES = 4096


def encode_cursor(
    positions: Mapping[str, str], signer: SessionSigner, method: str, owner: str
) -> str | None:
    """The merged list's ``nextCursor``: each unfinished server's own cursor, sealed (read by
    no one but this gateway) for this list and this caller: a server's cursor may name the
    last tool of its page, one hidden from this caller (red-team wave 40). A server's cursor
    over
    ``MAX_SERVER_CURSOR`` characters is left out (its later pages are that server's loss,
    logged), so the merged cursor is always one ``decode_cursor`` takes back."""
    kept = {}
    for server, cursor in positions.items():
        if len(cursor) > MAX_SERVER_CURSOR:
            log.warning("aggregate.cursor_too_long", server=server, chars=len(cursor))
            continue
        kept[server] = cursor
    if not kept:
        return None
    return signer.seal(_CURSOR + method, owner, json.dumps(kept, separators=(",", ":")))


def decode_cursor(
    cursor: Any,
    servers: Mapping[str, Any],
    msg_id: Any,
    signer: SessionSigner,
    method: str,
    owner: str,
) -> dict[str, str | None]:
    """Where each server's next page starts: None for its first page (no cursor given), or
    the positions a cursor of ours carries. A cursor not made here, for this list and this
    caller, is refused, never guessed at: a caller cannot choose which servers' pages are
    read, nor what cursor a server gets."""
    if cursor is None:
        return dict.fromkeys(servers)
    bad = BadMessage(rpc.INVALID_PARAMS, "invalid cursor", status=200, msg_id=msg_id)
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    inner = signer.unseal(_CURSOR + method, owner, cursor)
    if inner is None:
        raise bad
    try:
        value = json.loads(inner)
    except ValueError as exc:
        raise bad from exc
    if not isinstance(value, dict) or not value:
        raise bad
    if not all(k in servers and isinstance(v, str) for k, v in value.items()):
        raise bad
    return dict(value)


class Catalogue:
    """The names and resource owners ``/mcp`` learned from the lists it merged."""

    def __init__(
        self, gw: Gateway, names: Names, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.gw = gw
        self.names = names
        self.uris = Claims(MAX_OWNED)  # resource URIs -> the servers that listed them
        self.templates = Claims(MAX_TEMPLATES)  # URI templates' literal heads, likewise
        self.short_heads: set[tuple[str, str]] = set()  # template heads too wide to learn (logged)
        self.unroutable: set[tuple[str, str]] = set()  # names not shown, each logged once
        self.gate = Gate(clock=clock)  # when the lists may be read again for unknown URIs

    async def relearn(self, uri: str | None, learn: Callable[[], Awaitable[None]]) -> None:
        """``learn`` (every server's resource lists read again, and learned from) for a
        ``uri`` no server is known to have: one reading at a time (callers meanwhile wait for
        it), none within the interval of the last one (``RELEARN_SECONDS``, doubled while
        readings learn nothing), none for a URI two servers claim (that is final)."""
        if uri is not None and self.claimants(uri):
            return

        async def read() -> bool:
            before = self.uris.added + self.templates.added
            await learn()
            return self.uris.added + self.templates.added > before

        running = self.gate.start(read)
        if running is not None:
            await asyncio.shield(running)

    def page(
        self,
        method: str,
        identity: Identity,
        results: Mapping[str, Mapping[str, Any]],
        session: str | None = None,
    ) -> dict[str, Any]:
        """One merged page of ``method`` from each server's page (tools through the caller's
        view in its ``session``, names made outward); ``nextCursor`` carries the servers with
        more to give. A name that would not route back to the tool listed is left out."""
        key, kind = LISTS[method]
        lists: dict[str, list[dict[str, Any]]] = {}
        for server, result in results.items():
            listed = result.get(key)
            if not isinstance(listed, list):  # one server's odd answer is that server's loss
                log.warning("aggregate.upstream_malformed", server=server, method=method)
                continue
            if kind is not None and len(listed) > MAX_LISTED_TOOLS:  # as the relay shows it
                log.warning("tools.too_many", server=server, method=method, items=len(listed))
                listed = []  # (learned from, item by item, on the loop every caller shares)
            lists[server] = (
                [i for i in listed if isinstance(i, dict)]
                if kind == "tool"  # (through the caller's view below, which checks them)
                else well_formed_items(key, readable(listed, server), server)
            )
        if kind is not None:
            # Who owns a name is learned from each server's whole list, never from what this
            # caller may see: routing and collisions must not depend on the caller.
            self.names.learn(
                kind,
                [
                    (server, self.names.outward(server, str(i.get("name", ""))))
                    for server, listed in lists.items()
                    for i in listed
                ],
            )
        items: list[dict[str, Any]] = []
        positions: dict[str, str] = {}
        for server, listed in lists.items():
            if kind == "tool":
                view = ClientView(self.gw, server, identity, session)
                view.answers = any_id  # the servers' answers, already read as such
                view.method = "tools/list"
                shown = view.filter({"result": {"tools": listed}})
                listed = shown["result"]["tools"] if shown is not None else listed
            for item in listed:
                shown_item = self._outward(server, item, kind)
                if shown_item is not None:
                    items.append(shown_item)
            cursor = results[server].get("nextCursor")
            if isinstance(cursor, str) and cursor:
                positions[server] = cursor
        out: dict[str, Any] = {key: items}
        cursor = encode_cursor(positions, self.gw.signer, method, identity.owner)
        if cursor is not None:
            out["nextCursor"] = cursor
        return out

    def _outward(
        self, server: str, item: dict[str, Any], kind: str | None
    ) -> dict[str, Any] | None:
        """The item as ``/mcp`` shows it, or None for a name that would be routed elsewhere."""
        if kind is None:
            self.learn_uri(server, item)
            return item
        name = str(item.get("name", ""))
        outward = self.names.outward(server, name)
        if self.names.inward(kind, outward) != (server, name):
            if len(self.unroutable) < MAX_OWNED and (server, name) not in self.unroutable:
                self.unroutable.add((server, name))
                log.warning("aggregate.name_unroutable", server=server, kind=kind, name=name[:128])
            return None
        return {**item, "name": outward}

    def learn_uri(self, server: str, item: Mapping[str, Any]) -> None:
        uri = item.get("uri")
        if isinstance(uri, str):
            self.uris.claim(uri, server)
        template = item.get("uriTemplate")
        if isinstance(template, str):
            head = template.split("{", 1)[0]
            if _whole_origin(head):
                self.templates.claim(head, server)
            elif len(self.short_heads) < MAX_OWNED and (server, head) not in self.short_heads:
                self.short_heads.add((server, head))
                log.warning("aggregate.template_too_wide", server=server, head=head[:128])

    def owner(self, uri: str) -> str | None:
        """The one server that listed ``uri`` or has a template whose literal head it starts
        with; None when none does, or when two servers claim it (both list it, one lists it
        under the other's template, or two servers' templates both fit): which one answers
        must never depend on what some caller got a server to list."""
        claimants = self.claimants(uri)
        return next(iter(claimants)) if len(claimants) == 1 else None

    def owns_news(self, server: str, message: Any) -> bool:
        """Whether the resource a ``notifications/resources/updated`` names is ``server``'s
        alone, as ``/mcp`` routes its URI: one server told a client that another's resource
        had changed (red-team waves 55 and 66)."""
        params = message.get("params") if isinstance(message, dict) else None
        uri = params.get("uri") if isinstance(params, dict) else None
        return isinstance(uri, str) and self.owner(uri) == server

    def claimants(self, uri: str) -> set[str]:
        """The servers that listed ``uri`` or have a template it fits."""
        claimants = set(self.uris.of(uri))
        for head in self.templates.keys_with_prefix_of(uri):
            claimants |= self.templates.of(head)
        return claimants


_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(//[^/?#]*/|[^/?#{]+[/:])")


def _whole_origin(head: str) -> bool:
    """Whether a template's literal head names at least its scheme and authority, up to the
    path (``doc://host/``, ``file:///``, ``urn:x:``): a head of one letter (``d{rest}``) made
    its server the one owner of every URI beginning with it that no other had listed yet,
    another agent's reads included (red-team wave 35). A wider head is not learned: the URIs
    it would route are routed by what servers list."""
    return _ORIGIN.match(head) is not None


class Claims:
    """Keys (URIs, template heads) and the servers that listed each. Each server's claims
    are bounded on their own (``cap`` each): past it the server's own oldest claim is
    forgotten, so one server listing a flood of URIs can push out only its own, never
    another server's claim to a URI it then lists unopposed."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.by_key: dict[str, set[str]] = {}
        self.by_server: dict[str, OrderedDict[str, None]] = {}
        self.added = 0  # claims made, ever (whether a reading learned anything)

    def claim(self, key: str, server: str) -> None:
        if len(key) > MAX_URI_CHARS:  # no routing by it: kept, it would be memory for good
            return
        mine = self.by_server.setdefault(server, OrderedDict())
        if key in mine:
            return
        mine[key] = None
        self.added += 1
        servers = self.by_key.setdefault(key, set())
        if servers and server not in servers:
            log.warning(
                "aggregate.uri_collision", uri=key[:200], servers=sorted(servers | {server})
            )
        servers.add(server)
        if len(mine) > self.cap:
            old, _ = mine.popitem(last=False)
            left = self.by_key.get(old)
            if left is not None:
                left.discard(server)
                if not left:
                    del self.by_key[old]

    def of(self, key: str) -> set[str]:
        return self.by_key.get(key, set())

    def keys_with_prefix_of(self, text: str) -> list[str]:
        return [key for key in self.by_key if text.startswith(key)]


def merge_capabilities(
    capabilities: list[Any], keep: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The capabilities of several servers as one (a flag set if any server sets it); only
    those in ``keep`` when it is given."""
    out: dict[str, Any] = {}
    for caps in capabilities:
        if not isinstance(caps, dict):
            continue
        for key, value in caps.items():
            if keep is not None and key not in keep:
                continue
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                merged = dict(out[key])
                for k, v in value.items():
                    merged[k] = (merged.get(k) is True or v is True) if isinstance(v, bool) else v
                out[key] = merged
            else:
                out.setdefault(key, value)
    return out


#: What ``/mcp`` tells its clients of one server's ``instructions`` (characters). A server's
#: 40 MiB of instructions were joined into every client's ``initialize`` answer: one agent
#: looping initialize and DELETE held the loop for seconds (red-team wave 39).
MAX_INSTRUCTIONS = 16 * 1024


def joined_instructions(results: Mapping[str, Mapping[str, Any]]) -> str | None:
    notes = [
        f"{n}: {cut_instructions(r['instructions'])}"
        for n, r in results.items()
        if isinstance(r.get("instructions"), str) and r["instructions"]
    ]
    return "\n\n".join(notes) if notes else None


def cut_instructions(text: str) -> str:
    """A server's instructions, at most ``MAX_INSTRUCTIONS`` characters of them."""
    if len(text) <= MAX_INSTRUCTIONS:
        return text
    return text[:MAX_INSTRUCTIONS] + f" [cut by celgate: {len(text) - MAX_INSTRUCTIONS} more]"


def _ttl(value: Any) -> int:
    """A server's ``ttlMs``: a whole number of milliseconds, anything else as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def bounded_capabilities(server: str, caps: dict[Any, Any]) -> dict[str, Any]:
    """A server's capabilities as ``/mcp`` may repeat them: 64 at most, each of at most
    ``MAX_CAPABILITY_BYTES`` (past it, ``{}``); what a server answered was rewritten into
    every client's answer, however large (red-team wave 39)."""
    bounded: dict[str, Any] = {}
    for name, value in list(caps.items())[:64]:
        written = json_bytes(value)
        if name == "__proto__" or b'__proto__":' in written:
            # A JavaScript client reads such a key as its object's prototype: one server's
            # went into every /mcp client's capabilities, in both eras (red-team wave 60).
            log.warning("aggregate.capability_proto", server=server, capability=str(name)[:100])
            continue
        if len(written) > MAX_CAPABILITY_BYTES:
            log.warning("aggregate.capability_cut", server=server, capability=str(name)[:100])
            value = {}
        bounded[str(name)[:100]] = value
    return bounded


def merge_discover(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``server/discover`` result for every server: the capabilities ``/mcp`` serves in
    this era joined (each bounded), instructions each under its server's name (cut), the
    versions every server supports."""
    versions: list[str] | None = None
    for result in results.values():
        offered = result.get("supportedVersions")
        theirs = [v for v in offered if isinstance(v, str)] if isinstance(offered, list) else []
        versions = theirs if versions is None else [v for v in versions if v in theirs]
    out: dict[str, Any] = {
        "capabilities": merge_capabilities(
            [
                bounded_capabilities(name, caps)
                for name, r in results.items()
                if isinstance(caps := r.get("capabilities"), dict)
            ],
            SERVED_CAPABILITIES_MODERN,
        ),
        "supportedVersions": versions or [],
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": min(_ttl(r.get("ttlMs")) for r in results.values()),
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "celgate", "version": "1"}},
    }
    instructions = joined_instructions(results)
    if instructions is not None:
        out["instructions"] = instructions
    return out


async def none_answered(send: Send, message: Message) -> None:
    """The error for a merged answer no server gave: a tools list of none would read as
    "the policy allows nothing". When only some fail, the others' tools are listed (the
    failures are logged as ``aggregate.upstream_failed``). A request's is read by every
    client: JSON-RPC -32001 under HTTP 200, as any upstream failure."""
    msg = "no server behind /mcp answered"
    body = rpc.error_body(message.msg_id, rpc.UPSTREAM_UNAVAILABLE, msg)
    await reply(send, rpc.upstream_failure_status(message.msg_id, 502), body)
