"""What one caller may see of what an upstream sends: every message back passes through here.

A tools list is the answer to a ``tools/list``, or any result with ``tools`` on a stream whose
request is not known here (a resumed stream): such a result is filtered, though only the
answer to a ``tools/list`` adds to the catalogue and the pins; the ``tools`` key of another
request's result is that result's own content, passed as it is. A list is filtered to what this
caller could ever be allowed to call (in its session, as its calls are decided), each kept tool
gets its risk and kind under ``_meta``, and a public cache hint becomes private (the list is per
caller). A tool whose pin refuses it is not listed, and a name is listed once: what an agent
reads of a tool is the one definition the gateway checked.

SSE event ids are bound to (server, grant, session) the way session ids are, so a
``Last-Event-ID`` from one grant cannot replay another grant's events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from gateway.edge.shapes import input_required_readable, list_result_fields, well_formed_items
from gateway.edge.tasks import ForeignTask, bind_tasks, is_task_notification, task_of
from gateway.edge.tell import refuse_server_request
from gateway.edge.toolnames import name_problem
from gateway.inventory.pins import too_deep, unreadable_definition
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.policy.visibility import visible
from gateway.telemetry.audit import log
from gateway.wire.jsonrpc import NOTIFICATION_PREFIX, SERVER_METHODS
from gateway.wire.sse import (
    DROP,
    MAX_MENDED_BYTES,
    NO_ID,
    NOT_AN_ANSWER,
    answered_id,
    carries_id,
    method_of,
    misshapen,
    result_keys,
    same_id_as,
    shapely,
    with_result_type,
)

#: Tools one list answer (one page) may hold; past it the page is shown empty (logged). MCP
#: servers page long lists; a few hundred tools is already a large server.
MAX_LISTED_TOOLS = 5000
#: A list answer (tools, prompts, resources, templates) of more bytes is shown as empty (its
#: pinned tools still checked), logged: each value of it is read, checked and written again
#: on the event loop every caller shares, and one of 45 MB (1,000 tools, 15,000 numbers in
#: each one's ``_meta``) held it 6 s (red-team wave 50). 1,000 tools of thirty properties
#: each are 1.8 MB.
MAX_LIST_ANSWER_BYTES = 16 * 1024 * 1024
#: A stream's server requests of unknown methods answered to their server (past it: dropped
#: only, so an upstream's flood costs the gateway no more than its own posts).
MAX_REFUSED_ASKS = 8

#: Where a listed tool carries its risk and kind (MCP ``_meta`` keys are reverse-DNS prefixed).
#: The ``_meta`` keys only the gateway writes begin so (``replies.DECISION_KEY``, ``RISK_KEY``,
#: ``KIND_KEY``): an upstream's are taken out of what it sends, so no result of a server can
#: read as a decision of the gateway's (red-team wave 49).
OWN_META = "io.celgate"
_OWN_META_BYTES = OWN_META.encode()
RISK_KEY = "io.celgate/risk"
KIND_KEY = "io.celgate/kind"


IdCheck = Callable[[Any], bool]


def no_id(_: Any) -> bool:
    return False


def any_id(_: Any) -> bool:
    return True


def both(first: IdCheck, second: IdCheck) -> IdCheck:
    return lambda value: first(value) and second(value)


def same_id(wanted: Any) -> IdCheck:
    """A check passing ``wanted`` alone, of its own JSON type (``1`` is not ``"1"``, nor
    ``true``)."""
    if wanted is None:
        return no_id

    return lambda value: same_id_as(value, wanted)


def id_digest(value: Any) -> str:
    """What a stream's event ids say of its request's id (or progress token): 16 hex digits
    of the sha256 of its JSON (so 9 and "9" differ)."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _same_digest(digest: str) -> IdCheck:
    return lambda value: id_digest(value) == digest


#: The tag of a stream's event ids that is no request's (a server's GET stream, a listen).
NO_REQUEST = "g"
NO_TOKEN = "-" * 16  # (in a request's tag: it named no progress token)
#: A request's tag starts with its kind: a list's own letter, "r" for any other request.
#: A stream resumed from its events is read as the same request's: a resumed tools/list as a
#: listing (pins and all), the other lists with their items checked, and any other request's
#: result as its own content (read as "no known request", a call's result holding a "tools"
#: key was cut to what the caller may call; red-team wave 66).
KIND_OF_METHOD = {
    "tools/list": "l",
    "prompts/list": "p",
    "resources/list": "s",
    "resources/templates/list": "t",
}
METHOD_OF_KIND = {kind: method for method, kind in KIND_OF_METHOD.items()}
#: The method a resumed stream of any other request is read as: no list, yet no None (a
#: stream of no known request).
OTHER_REQUEST = ""
REQUEST_KINDS = ("r", *METHOD_OF_KIND)


def progress_token(params: Any) -> Any:
    """The ``progressToken`` a request's params name, or None."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


#: The lists besides tools, by request method: the key of their items (each one's shape
#: checked: ``shapes.well_formed``).
OTHER_LISTS = {
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}

#: What a 2026-07-28 server may ask its client in an ``input_required`` result.
INPUT_REQUEST_METHODS = frozenset({"elicitation/create", "sampling/createMessage", "roots/list"})


def _asks_what_clients_give(requests: Any) -> bool:
    """Whether an ``input_required`` result's ``inputRequests`` (absent, or an object of
    requests) asks only what a client gives: an upstream's ``evil/x`` or ``tools/call`` in
    them went on unread, and the Python SDK failed the whole client on them (red-team wave
    46)."""
    if requests is None:
        return True
    if not isinstance(requests, dict):
        return False
    return all(
        isinstance(asked, dict) and asked.get("method") in INPUT_REQUEST_METHODS
        for asked in requests.values()
    )


class ClientView:
    """One caller's view of one upstream (``session`` may be learned from ``initialize``)."""

    __slots__ = (
        "answers",
        "cacheable",
        "created",
        "creates",
        "gw",
        "identity",
        "method",
        "modern",
        "once",
        "oversized",
        "progress",
        "refused",
        "request",
        "server",
        "session",
        "tag",
        "tasks",
        "untold_only",
        "upstream_session",
    )

    def __init__(
        self, gw: Gateway, server: str, identity: Identity, session: str | None = None
    ) -> None:
        self.gw = gw
        self.server = server
        self.identity = identity
        self.session = session
        #: The upstream's ids of the tasks this stream may speak of: those its request named
        #: (checked as this caller's: a ``tasks/*`` request's one, a listen's followed ones).
        #: A message about any other task is dropped (an answer becomes an error): an
        #: upstream may tell any task on any stream, a session's own GET included.
        self.tasks: frozenset[str] = frozenset()
        #: A request's stream resumed: one answer at most is its (an upstream's event store
        #: keyed by the request's id replayed a later request's under the same id: a
        #: tools/list whole, as the call's result; red-team wave 72). Every answer is read.
        self.once = False
        #: The request is a ``tools/call``: its answer may make a task (bound, and then known).
        self.creates = False
        self.created: set[str] = set()
        #: The caller speaks 2026-07-28, where every result names its ``resultType``: one an
        #: upstream sent without it is ``complete`` (what the SDKs read of an older server),
        #: told as such (the TypeScript SDK and the Inspector refuse a result without it).
        self.modern = False
        #: ... and the request is one whose result carries ``ttlMs`` and ``cacheScope`` (also
        #: required): one left out is 0 and ``private`` (not kept, not shared).
        self.cacheable = False
        #: The answer to this list request is past ``MAX_LIST_ANSWER_BYTES``: shown empty.
        self.oversized = False
        #: The message ``wants`` last read wants nothing but its ``resultType`` (``splice``).
        self.untold_only = False
        #: The answers (results and errors) this stream may carry, by their id: a request's
        #: stream its own answer alone; a server's GET stream, a listen, none (an upstream
        #: that answered with another request's id ended that request for its client: a call
        #: held here for approval read as done, another server's answer on ``/mcp`` replaced).
        self.answers: IdCheck = no_id
        #: The progress tokens this stream may speak of: a request's own, on its stream
        #: (a server's GET stream tells none: a call held here has no progress upstream).
        self.progress: IdCheck = no_id
        #: What the ids of this stream's events are bound to besides the caller: the
        #: request (digests of its id and token) or none, so that a stream resumed from one
        #: of them carries what that request's stream could, and nothing else.
        self.tag = NO_REQUEST
        #: The request's id and progress token, until its tag is first needed (most answers
        #: go as JSON and need none: two digests a call saved).
        self.request: tuple[Any, Any] | None = None
        #: The method of the request this stream answers, when known. Only the answer to a
        #: ``tools/list`` tells the gateway what tools a server has: any result holding a
        #: ``tools`` key (a tool's own output) fed the catalogue and the pins, and one
        #: allowed call's result made a tool the server never listed "read" and "low" for
        #: every caller, or marked a pinned tool changed (red-team wave 39).
        self.method: str | None = None
        #: The server's requests of unknown methods this stream answered "method not found"
        #: (``MAX_REFUSED_ASKS`` at most: the rest are only dropped).
        self.refused = 0
        #: The upstream's own session this stream is on (``session`` on the relay; on
        #: ``/mcp``, where ``session`` is the client's, its link's): where those go.
        self.upstream_session = session

    def for_request(self, msg_id: Any, params: Any, method: str | None = None) -> None:
        """This stream is the answer to the request ``msg_id`` (with ``params``), a
        ``method`` request."""
        self.method = method
        token = progress_token(params)
        self.answers = same_id(msg_id)
        self.progress = same_id(token)
        self.request = (msg_id, token)

    def event_tag(self) -> str:
        """What this stream's event ids are bound to (``tag``, made from the request's id
        and token the first time it is asked for)."""
        request = self.request
        if request is not None:
            msg_id, token = request
            kind = KIND_OF_METHOD.get(self.method or "", "r")
            self.tag = (
                kind + id_digest(msg_id) + (id_digest(token) if token is not None else NO_TOKEN)
            )
            self.request = None
        return self.tag

    def wrap_event_id(self, event_id: bytes) -> bytes:
        raw = f"{event_id.decode('utf-8', 'replace')}.{self.event_tag()}"
        wrapped = self.gw.signer.wrap_event(self.server, self.identity.owner, self.session, raw)
        return wrapped.encode()

    def unwrap_event_id(self, presented: str) -> str | None:
        """The upstream's event id inside one this caller was given, or None; this view then
        carries what the stream it came from could (its request's answer and progress)."""
        owner = self.identity.owner
        inner = self.gw.signer.unwrap_event(self.server, owner, self.session, presented)
        raw, dot, tag = (inner or "").rpartition(".")
        if not dot:
            return None
        if tag == NO_REQUEST:
            self.answers = self.progress = no_id
        elif len(tag) == 33 and tag[0] in REQUEST_KINDS:
            self.tag = tag  # its events are that request's still (resumed again, the same)
            self.request = None
            # A resumed tools/list is a listing (pins and all): read as a stream of no known
            # request, a changed pinned tool reached the agent unchecked (red-team wave 42).
            self.method = METHOD_OF_KIND.get(tag[0], OTHER_REQUEST)
            self.answers = _same_digest(tag[1:17])
            self.once = True
            self.progress = no_id if tag[17:] == NO_TOKEN else _same_digest(tag[17:])
        else:
            return None
        return raw

    def resumed_request(self) -> str | None:
        """The digest of the id of the request whose stream a ``Last-Event-ID`` resumed
        (``unwrap_event_id``), or None for a stream of no request's."""
        tag = self.tag
        return tag[1:17] if len(tag) == 33 and tag[0] in REQUEST_KINDS else None

    def wrap_task_id(self, task_id: str) -> str:
        return self.gw.signer.wrap_task(self.server, self.identity.owner, task_id)

    def _may_hear_of(self, task_id: str | None) -> bool:
        """Whether this stream may speak of the upstream's task ``task_id``."""
        return task_id in self.tasks or task_id in self.created

    def _known_task_id(self, task_id: str) -> str:
        if not self._may_hear_of(task_id):
            raise ForeignTask(task_id)
        return self.wrap_task_id(task_id)

    def _created_task_id(self, task_id: str) -> str:
        self.created.add(task_id)
        return self.wrap_task_id(task_id)

    def wants(self, data: bytes) -> bool:
        """Only what could hold a tools list or a task id is read (a key spelled with escapes
        is too), and another list's answer (each item's shape checked)."""
        self.untold_only = False
        if self.method in OTHER_LISTS:
            self.oversized = len(data) > MAX_LIST_ANSWER_BYTES
            return True
        if self.method == "tools/list" and len(data) > MAX_LIST_ANSWER_BYTES:
            self.oversized = True
            return True
        if b'"tools"' in data or b'"task' in data or b"\\u" in data or b"progress" in data:
            return True
        if _OWN_META_BYTES in data:
            return True  # a key only the gateway writes, maybe: read, taken out
        if b'"method"' in data:
            method = method_of(data)
            if method is not None and not self._known(method):
                return True  # a method no client is known to serve, or one not read so: dropped
            if method is not None and method.startswith(NOTIFICATION_PREFIX) == carries_id(data):
                return True  # a notice with an id, or a request without one: read, dropped
            if method is not None and self.modern and carries_id(data):
                return True  # a request on a 2026-07-28 stream: read, dropped
        answered = answered_id(data)
        if answered is not NOT_AN_ANSWER and (
            answered is NO_ID or self.once or not self.answers(answered)
        ):
            return True  # not an answer this stream carries (or its one, resumed): read
        if misshapen(data):
            return True  # params or a result that is no object: read, refused
        if not self.modern or b'"result"' not in data:
            return False
        if b"input_required" in data:
            return True
        if b'"resultType"' not in data:
            self.untold_only = not self.cacheable  # (ttlMs and cacheScope: read, written)
            return True
        keys = result_keys(data)  # the words may be anywhere: is it the result's own key?
        if keys is None:
            return True  # not one message with a result object: read it whole
        told, ttl, scope = keys
        return not told or (self.cacheable and not (ttl and scope))

    def splice(self, data: bytes) -> bytes | None:
        """A long answer whose only want is the ``resultType`` a 2026-07-28 result must give,
        with it written in, unread; None for any other (read whole, then). Read and written
        again, a 60 MiB answer held the loop every caller shares for 11 s."""
        if not self.untold_only or len(data) <= MAX_MENDED_BYTES:
            return None
        return with_result_type(data)

    def filter(self, message: Any) -> Any | None:
        """The message as this caller may see it, or None when it is fine as it is."""
        if not isinstance(message, dict):
            return None
        unforged = without_own_meta(message)
        if unforged is not message:  # what only the gateway writes, an upstream wrote
            log.warning("upstream.forged_meta", server=self.server, grant=self.identity.grant)
            shown = self._filter(unforged)
            return unforged if shown is None else shown
        return self._filter(message)

    def _filter(self, message: dict[str, Any]) -> Any | None:
        asks_or_tells = "method" in message
        if asks_or_tells and ("result" in message or "error" in message):
            return DROP  # a request (or notice) and an answer at once: no shape to pass on
        method = message.get("method")
        if asks_or_tells and not self._known(method):
            log.warning("upstream.unknown_method", server=self.server, grant=self.identity.grant)
            self._refuse_ask(message)
            return DROP  # no method a client is known to serve: not for a client to run
        if isinstance(method, str) and method.startswith(NOTIFICATION_PREFIX) == ("id" in message):
            # a notice with an id (a TypeScript client answered it), or a request without one
            # (no answer could reach the server): no shape MCP gives that method
            log.warning("upstream.misshapen_message", server=self.server, method=method)
            self._refuse_ask(message)
            return DROP
        if asks_or_tells and self.modern and "id" in message:
            # The 2026-07-28 wire asks a client through input_required results, never on a
            # stream: a client with no session could not answer it (red-team wave 56).
            log.warning("upstream.request_on_stream", server=self.server, method=str(method)[:100])
            return DROP
        if not asks_or_tells and not self.answers(message.get("id")) and not self._refuses(message):
            log.warning("upstream.foreign_answer", server=self.server, grant=self.identity.grant)
            return DROP
        if not asks_or_tells and self.once and self.answers(message.get("id")):
            self.answers = no_id  # its one answer: any after it is another request's
        if not shapely(message):  # params, a result or an error of no shape a client reads
            log.warning("upstream.misshapen_message", server=self.server, method=method)
            if asks_or_tells:
                self._refuse_ask(message)
                return DROP
            error = {"code": -32603, "message": "the server answered in a shape no client reads"}
            return {"jsonrpc": "2.0", "id": message.get("id"), "error": error}
        if message.get("method") == "notifications/progress" and not self.progress(
            progress_of(message)
        ):
            log.warning("upstream.foreign_progress", server=self.server, grant=self.identity.grant)
            return DROP
        if is_task_notification(message.get("method")) and not self._may_hear_of(
            task_of(message)  # a task of another caller, or none named
        ):
            return DROP
        created = self._created_task_id if self.creates and not asks_or_tells else None
        try:  # task ids: this caller's own
            bound = bind_tasks(message, self._known_task_id, created)
        except ForeignTask:
            log.warning("tasks.foreign", server=self.server, grant=self.identity.grant)
            if asks_or_tells:
                return DROP
            error = {"code": -32603, "message": "the server answered with a task not yours"}
            return {"jsonrpc": "2.0", "id": message.get("id"), "error": error}
        shown = bound if bound is not None else message
        result = shown.get("result")
        if not isinstance(result, dict):
            return bound
        if self.modern and not asks_or_tells:
            if result.get("resultType") == "input_required" and not (
                _asks_what_clients_give(result.get("inputRequests"))
                and input_required_readable(result)
            ):
                log.warning("upstream.unknown_input_request", server=self.server)
                error = {"code": -32603, "message": "the server asked for input no client gives"}
                return {"jsonrpc": "2.0", "id": message.get("id"), "error": error}
            told = self._told(result)
            if told is not result:
                result = told
                bound = shown = {**shown, "result": result}
        listed = OTHER_LISTS.get(self.method or "") if not asks_or_tells else None
        if listed is not None and isinstance(result.get(listed), list):
            if self.oversized:
                log.warning("upstream.list_too_large", server=self.server, list=listed)
                return {**shown, "result": list_result_fields({**result, listed: []})}
            items = well_formed_items(listed, readable(result[listed], self.server), self.server)
            return {**shown, "result": list_result_fields({**result, listed: items})}
        if "tools" not in result or self.method not in (None, "tools/list"):
            return bound  # (another request's result: its "tools" are its own content)
        return {**shown, "result": self._tools_result(result)}

    def _known(self, method: Any) -> bool:
        """Whether ``method`` is one a client may be sent: MCP's, or the operator's
        (``relay.extra_server_methods``)."""
        return isinstance(method, str) and (
            method in SERVER_METHODS or method in self.gw.config.relay.extra_server_methods
        )

    def _refuse_ask(self, message: dict[str, Any]) -> None:
        """A server's request of a method no client serves, dropped here, is answered to
        the server "method not found", as a client would (it waited for an answer until its
        own timeout); a handshake-era session's only: a 2026-07-28 server asks nothing on
        a stream."""
        msg_id = message.get("id")
        if msg_id is None or self.modern or self.refused >= MAX_REFUSED_ASKS:
            return
        upstream = self.gw.upstreams.get(self.server)
        if upstream is None or not isinstance(msg_id, str | int) or isinstance(msg_id, bool):
            return
        self.refused += 1
        refuse_server_request(upstream, self.upstream_session, self.identity.owner, msg_id)

    def _refuses(self, message: dict[str, Any]) -> bool:
        """Whether ``message`` is an upstream's refusal of the exchange itself (an error of
        no id, as a 400, a 404 for a session it ended or a 405 carries), which no client can
        read as the answer to any request of its own: it passes, with its status."""
        return message.get("id") is None and "error" in message and "result" not in message

    def _told(self, result: dict[str, Any]) -> dict[str, Any]:
        """A 2026-07-28 result with what that revision requires of it and it left out."""
        missing: dict[str, Any] = {}
        if "resultType" not in result:
            missing["resultType"] = "complete"
        if self.cacheable and result.get("resultType", "complete") == "complete":
            # missing, or of a value no client reads (the SDKs failed the whole result)
            if not whole_ms(result.get("ttlMs")):
                missing["ttlMs"] = 0
            if result.get("cacheScope") not in ("public", "private"):
                missing["cacheScope"] = "private"
        return {**result, **missing} if missing else result

    def _check_pinned(self, tools: list[Any]) -> None:
        """The pinned tools of a page too long to read, shown to their pins (each name
        looked up; only a pinned one is digested)."""
        pins, server = self.gw.pins, self.server
        pinned = _pinned_names(self.gw, server)
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or name not in pinned:
                continue
            pins.observe(server, unreadable_definition(name) if too_deep(tool) else tool)

    def _tools_result(self, result: dict[str, Any]) -> dict[str, Any]:
        tools = result["tools"]
        kept: list[dict[str, Any]] = []
        # What a stream of no known request carries (resumed) is filtered but teaches nothing.
        listing = self.method == "tools/list"
        if isinstance(tools, list) and (len(tools) > MAX_LISTED_TOOLS or self.oversized):
            # Each tool is digested, classified and decided on the event loop every caller
            # shares: a list of 100,000 held it for seconds. Such a page is shown as empty;
            # its pinned tools are still checked against their pins (a server that padded
            # its list past the bound changed a pinned tool unseen: red-team wave 40).
            log.warning(
                "tools.too_many", server=self.server, tools=len(tools), oversized=self.oversized
            )
            if listing:
                self._check_pinned(tools)
            tools = []
        if isinstance(tools, list):
            gw, server, who, session = self.gw, self.server, self.identity, self.session
            policy, now = gw.policy, gw.now()
            seen: set[str] = set()
            deep: list[str] = []
            for tool in tools:
                if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                    continue
                if too_deep(tool):
                    deep.append(tool["name"])
                    if listing:
                        gw.pins.observe(server, unreadable_definition(tool["name"]))
                    continue
                name = tool["name"]
                if listing:  # every definition, so any change is seen
                    info, _ = gw.observe(server, tool)
                else:
                    info = gw.tool_info(server, name)
                if name in seen or name_problem(name) or gw.pins.refusal(server, name):
                    continue  # one definition per name, callable, and none the pins refuse
                seen.add(name)
                call = Call(tool=name, server=server, identity=who, session=session, info=info)
                if visible(policy, call, now):
                    meta = tool.get("_meta")
                    meta = _others(meta) if isinstance(meta, dict) else {}
                    risk = {RISK_KEY: info.risk, KIND_KEY: info.kind}
                    kept.append({**tool, "_meta": {**meta, **risk}})
            if deep:  # one line a list: a list of 5,000 wrote 5,000 (red-team wave 38)
                names = [ascii(name)[:100] for name in deep[:5]]
                log.warning("tools.too_deep", server=server, tools=len(deep), first=names)
        else:  # `tools` no list: nothing a client could read as tools (a 500 before: wave 52)
            log.warning("upstream.misshapen_message", server=self.server, method=self.method)
        shown = well_formed_items("tools", readable(kept, self.server), self.server)
        out = list_result_fields({**result, "tools": shown})
        if out.get("cacheScope") == "public":
            out["cacheScope"] = "private"
        if "ttlMs" in out:
            # What this caller may call is the policy's now: a list kept for the server's
            # time (an hour) went on showing a tool a reload hid, and hiding one it allowed
            # (red-team wave 68). As /mcp's: never to be kept.
            out["ttlMs"] = 0
        cursor = out.get("nextCursor")
        if isinstance(cursor, str):  # sealed: it may name a tool of the page hidden here
            sealed = seal_cursor(self.gw, self.server, self.identity.owner, cursor)
            if sealed is None:
                out.pop("nextCursor")
            else:
                out["nextCursor"] = sealed
        return out


#: An upstream's list cursor this long at most is carried (sealed) to its caller; a longer
#: one ends the list there (logged).
MAX_UPSTREAM_CURSOR = 4096
_TOOLS_CURSOR = "tools-cursor\x00"


def seal_cursor(gw: Gateway, server: str, owner: str, cursor: str) -> str | None:
    """An upstream's ``tools/list`` cursor as its caller holds it: sealed (``SessionSigner.
    seal``) for this server and caller. A server paging by name (base64 of the page's last
    tool, a common way) told every caller the name of a tool hidden from it (red-team wave
    40). None for a cursor past ``MAX_UPSTREAM_CURSOR``."""
    if len(cursor) > MAX_UPSTREAM_CURSOR:
        log.warning("tools.cursor_too_long", server=server, chars=len(cursor))
        return None
    return gw.signer.seal(_TOOLS_CURSOR + server, owner, cursor)


def unsealed_cursor(gw: Gateway, server: str, owner: str, cursor: object) -> str | None:
    """The upstream's cursor a caller's ``tools/list`` cursor holds, or None for one not
    sealed here for this server and caller."""
    if not isinstance(cursor, str) or len(cursor) > 2 * MAX_UPSTREAM_CURSOR:
        return None
    return gw.signer.unseal(_TOOLS_CURSOR + server, owner, cursor)


def _pinned_names(gw: Gateway, server: str) -> set[str]:
    return {tool for (where, tool) in gw.pins.pinned if where == server}


def without_own_meta(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` without the ``_meta`` keys only the gateway writes, in its ``result``,
    its ``params`` or its error's ``data`` (``message`` itself when it has none)."""
    out = message
    for part in ("result", "params", "error"):
        body = message.get(part)
        if not isinstance(body, dict):
            continue
        where = "data" if part == "error" else "_meta"
        meta = body.get(where)
        if isinstance(meta, dict) and any(_own(key) for key in meta):
            out = {**out, part: {**body, where: _others(meta)}}
    return out


def _own(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(OWN_META)


def _others(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in meta.items() if not _own(key)}


def progress_of(message: dict[str, Any]) -> Any:
    """The token a ``notifications/progress`` names, or None."""
    params = message.get("params")
    return params.get("progressToken") if isinstance(params, dict) else None


#: How a ``__proto__`` key is written by ``json.dumps`` (a string holding the text has its
#: quotes escaped, so the bare quote before the colon is a key's end).
_PROTO_KEY = '__proto__":'


def readable(tools: list[Any], server: str) -> list[dict[str, Any]]:
    """The tools whose definitions are Unicode text and JSON: a lone surrogate
    (``"\\ud83d"``, half an emoji cut by a JavaScript server) is valid JSON that strict
    clients refuse, a number past a double's range (``1e999``) is read as infinity and would
    be written ``Infinity``, which is no JSON; one such tool would make a whole list, on
    ``/mcp`` every server's, unreadable to them. A definition with a ``__proto__`` key at any
    depth is left out too: a JavaScript client's schema library makes it the object's
    prototype (the relay refuses such a message whole; ``/mcp`` merged it as it came)."""
    try:
        text = json.dumps(tools, ensure_ascii=False, allow_nan=False)
        text.encode()
        if _PROTO_KEY not in text:
            return tools
    except (UnicodeEncodeError, ValueError):
        pass
    kept = []
    for tool in tools:
        try:
            text = json.dumps(tool, ensure_ascii=False, allow_nan=False)
            text.encode()
        except UnicodeEncodeError:
            log.warning("tools.not_unicode", server=server, tool=ascii(tool.get("name"))[:200])
            continue
        except ValueError:
            log.warning("tools.not_json", server=server, tool=ascii(tool.get("name"))[:200])
            continue
        if _PROTO_KEY in text:  # a key ending in it, or with a quote before it: left out too
            log.warning("tools.proto_key", server=server, tool=ascii(tool.get("name"))[:200])
            continue
        kept.append(tool)
    return kept


def whole_ms(value: Any) -> bool:
    """Whether ``value`` is a ``ttlMs`` clients read: a whole number of milliseconds, >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**15
