"""A request ``/mcp`` routes to one server, in either era: the call the pipeline decides, and
the request as the server is to see it (renamed in the body and in ``Mcp-Name`` only when a
name changes; otherwise forwarded byte for byte)."""

from __future__ import annotations

from typing import Any

from mcp.shared.inbound import encode_header_value

from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.names import Names
from gateway.edge.calls import checked_params
from gateway.edge.forward import Forward
from gateway.pipeline.admission import Admission, refused_unread
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming
from gateway.wire.jsonrpc import BadMessage, Message, json_bytes
from gateway.wire.sse import View


def unrouted(
    gw: Gateway, incoming: Incoming, message: Message, identity: Identity, session: str | None
) -> Admission:
    """Record a ``tools/call`` whose name no server on ``/mcp`` has (``refused_unread``). A
    name that is none, or arguments that are no object, are invalid params first (raised,
    recorded), as they are for a name routed to a server: a hidden tool of a server with no
    prefix was told apart from a missing name by them (red-team wave 39)."""
    name = message.params.get("name")
    tool, _ = checked_params(gw, incoming, message, "", name, identity, session)
    # Without its arguments: no entry's secret_args are known for a name no server has
    # (a server down, a tool not yet listed), and a password was logged in clear.
    call = Call(
        tool=tool,
        args={},
        server="",
        identity=identity,
        session=session,
        client_ip=incoming.client_ip,
    )
    return refused_unread(gw, call, f"no tool named {tool!r} on /mcp")


def routed(
    gw: Gateway,
    incoming: Incoming,
    server: str,
    message: Message,
    changed: dict[str, Any],
    original: bytes,
    view: View,
    session: str | None = None,
    grant: str | None = None,
) -> Forward:
    """The request as ``server`` is to see it, on the upstream session ``session``."""
    upstream = gw.upstreams[server]
    if any(message.params.get(k) != v for k, v in changed.items()):
        value = {**message.raw, "params": {**message.params, **changed}}
        body = json_bytes(value)
        if "mcp-name" in incoming.headers and "name" in changed:
            incoming.headers["mcp-name"] = encode_header_value(changed["name"])
    else:
        body = original
    msg_id = message.msg_id if message.is_request else None  # (an answer's failure: a status)
    return Forward(upstream, session, body, msg_id, view, grant=grant)


#: What ``target`` routes: the methods of one server, by name, by URI, or by either.
ROUTED = frozenset(
    {
        "tools/call",
        "prompts/get",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
    }
)


def target(
    names: Names, catalogue: Catalogue, servers: int, message: Message
) -> tuple[str | None, dict[str, Any]]:
    """The server a routed request goes to and what of its params changes on the way
    (server None: a name or URI no server is known to have)."""
    method, params = message.method, message.params
    if method in ("tools/call", "prompts/get"):
        kind = "tool" if method == "tools/call" else "prompt"
        name = params.get("name")
        parts = names.inward(kind, name) if isinstance(name, str) else None
        return (parts[0], {"name": parts[1]}) if parts else (None, {})
    if method == "completion/complete":
        ref = params.get("ref")
        if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
            name = ref.get("name")
            parts = names.inward("prompt", name) if isinstance(name, str) else None
            return (parts[0], {"ref": {**ref, "name": parts[1]}}) if parts else (None, {})
    uri = named_uri(message)
    if uri is None:
        return None, {}
    owner = catalogue.owner(uri)
    if owner is None and servers == 1:
        owner = next(iter(catalogue.gw.upstreams))
    return owner, {}


def named_uri(message: Message) -> str | None:
    """The resource URI a routed request names (a completion's ``ref``), or None."""
    params = message.params
    if message.method == "completion/complete":
        ref = params.get("ref")
        uri = ref.get("uri") if isinstance(ref, dict) else None
    else:
        uri = params.get("uri")
    return uri if isinstance(uri, str) else None


def by_uri(message: Message) -> bool:
    """Whether a routed request names a resource (its owner may be learned from lists)."""
    return message.method not in ("tools/call", "prompts/get")


def unknown(message: Message) -> BadMessage:
    """The error for a routed request no server is known to take."""
    params = message.params
    if message.method == "prompts/get":
        what = f"unknown prompt {params.get('name')!r}"
    elif message.method == "completion/complete":
        what = "no server behind /mcp has the prompt or resource this completion refers to"
    else:
        what = (
            f"unknown resource {params.get('uri')!r} (or one that more than one server lists: "
            "read it through /mcp/<server>)"
        )
    return BadMessage(rpc.INVALID_PARAMS, what, status=200, msg_id=message.msg_id)
