"""What ``/mcp`` makes of several servers' answers: one list page (with a cursor that carries
each server's own), one set of capabilities, one ``server/discover`` result. Both eras use it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import structlog

from gateway.edge.agg.names import Names
from gateway.edge.clientview import ClientView
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.wire import jsonrpc as rpc
from gateway.wire.jsonrpc import BadMessage, Message

log = structlog.get_logger(__name__)

#: What each merged list holds, by method: the result's key and the kind of name it carries.
LISTS: dict[str, tuple[str, str | None]] = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", None),
    "resources/templates/list": ("resourceTemplates", None),
}
MAX_CURSOR_CHARS = 16 * 1024
MAX_OWNED = 100_000  # resource URIs remembered for routing (the oldest learned go first)
MAX_TEMPLATES = 10_000  # URI templates' literal heads, likewise
#: The owner of a URI (or a template head) two servers claim: routed to neither.
AMBIGUOUS = ""
#: The capabilities ``/mcp`` can serve for the servers behind it (``tasks`` is not routed).
SERVED_CAPABILITIES = ("tools", "prompts", "resources", "logging", "completions")


def encode_cursor(positions: Mapping[str, str]) -> str | None:
    """The merged list's ``nextCursor``: each unfinished server's own cursor."""
    if not positions:
        return None
    raw = json.dumps(dict(positions), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any, servers: Mapping[str, Any], msg_id: Any) -> dict[str, str | None]:
    """Where each server's next page starts: None for its first page (no cursor given), or
    the positions a cursor of ours carries (a cursor not ours is refused, never guessed at)."""
    if cursor is None:
        return dict.fromkeys(servers)
    bad = BadMessage(rpc.INVALID_PARAMS, "invalid cursor", status=200, msg_id=msg_id)
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise bad from exc
    if not isinstance(value, dict) or not value:
        raise bad
    if not all(k in servers and isinstance(v, str) for k, v in value.items()):
        raise bad
    return dict(value)


class Catalogue:
    """The names and resource owners ``/mcp`` learned from the lists it merged."""

    def __init__(self, gw: Gateway, names: Names) -> None:
        self.gw = gw
        self.names = names
        self.resource_owner: OrderedDict[str, str] = OrderedDict()
        self.templates: OrderedDict[str, str] = OrderedDict()  # a template's literal head
        self.unroutable: set[tuple[str, str]] = set()  # names not shown, each logged once

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
        lists = {
            server: [i for i in result.get(key) or [] if isinstance(i, dict)]
            for server, result in results.items()
        }
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
        cursor = encode_cursor(positions)
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
            _claim(self.resource_owner, uri, server, MAX_OWNED)
        template = item.get("uriTemplate")
        if isinstance(template, str):
            head = template.split("{", 1)[0]
            if head:
                _claim(self.templates, head, server, MAX_TEMPLATES)

    def owner(self, uri: str) -> str | None:
        """The server that listed ``uri``, or whose template's literal head it starts with
        (the longest head wins); None when two servers claim it (listed by both, or listed
        by one and under the other's template): which one answers must never depend on what
        some caller got a server to list."""
        exact = self.resource_owner.get(uri)
        heads = [h for h in self.templates if uri.startswith(h)]
        by_template = self.templates[max(heads, key=len)] if heads else None
        if AMBIGUOUS in (exact, by_template):
            return None
        if exact is not None and by_template is not None and exact != by_template:
            return None
        return exact or by_template


def _claim(owners: OrderedDict[str, str], key: str, server: str, cap: int) -> None:
    """``server`` lists ``key``: its owner, unless another server did too (then nobody's).
    Past ``cap`` the oldest learned is forgotten (learned again from the lists when next
    asked for), never the newest refused."""
    known = owners.get(key)
    if known is None:
        owners[key] = server
        if len(owners) > cap:
            owners.popitem(last=False)
    elif known not in (server, AMBIGUOUS):
        owners[key] = AMBIGUOUS
        log.warning("aggregate.uri_collision", uri=key[:200], servers=sorted((known, server)))


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


def joined_instructions(results: Mapping[str, Mapping[str, Any]]) -> str | None:
    notes = [f"{n}: {r['instructions']}" for n, r in results.items() if r.get("instructions")]
    return "\n\n".join(notes) if notes else None


def merge_discover(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``server/discover`` result for every server: capabilities joined, instructions
    each under its server's name, the versions every server supports."""
    versions: list[str] | None = None
    for result in results.values():
        theirs = [v for v in result.get("supportedVersions") or [] if isinstance(v, str)]
        versions = theirs if versions is None else [v for v in versions if v in theirs]
    out: dict[str, Any] = {
        "capabilities": merge_capabilities([r.get("capabilities") for r in results.values()]),
        "supportedVersions": versions or [],
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": min(int(r.get("ttlMs") or 0) for r in results.values()),
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "celgate", "version": "1"}},
    }
    instructions = joined_instructions(results)
    if instructions is not None:
        out["instructions"] = instructions
    return out


def no_server_answered(message: Message) -> bytes:
    """The error for a merged answer no server gave: a tools list of none would read as
    "the policy allows nothing". When only some fail, the others' tools are listed (the
    failures are logged as ``aggregate.upstream_failed``)."""
    msg = "no server behind /mcp answered"
    return rpc.error_body(message.msg_id, rpc.UPSTREAM_UNAVAILABLE, msg)
