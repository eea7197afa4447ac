"""What one ``/mcp`` client sees of one upstream: the relay's view (a tools list filtered to
what the caller may call), names made outward, and the server's own requests under ids of the
gateway's making (``AggSession.outward_upcall``), with a server's cancellation of one of them
following the same mapping. Every message from the upstream is read here, as the server's
requests must be; the answer to the client's own request passes with its id untouched.
"""

from __future__ import annotations

from typing import Any

from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.names import Names
from gateway.edge.agg.sessions import AggSession
from gateway.edge.clientview import ClientView
from gateway.edge.tasks import is_task_notification
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.wire.sse import DROP

RESOURCE_NEWS = "notifications/resources/updated"


class AggView:
    __slots__ = ("catalogue", "inner", "names", "session")

    def __init__(
        self, inner: ClientView, names: Names, session: AggSession, catalogue: Catalogue
    ) -> None:
        self.inner = inner
        self.names = names
        self.session = session
        self.catalogue = catalogue

    def wants(self, data: bytes) -> bool:
        return b'"method"' in data or self.inner.wants(data)

    def splice(self, data: bytes) -> bytes | None:
        return None if b'"method"' in data else self.inner.splice(data)

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return self.inner.wrap_event_id(event_id)

    def filter(self, message: Any) -> Any | None:
        if not isinstance(message, dict):
            return None
        method = message.get("method")
        server = self.inner.server
        if isinstance(method, str):
            if is_task_notification(method):  # tasks are not served on /mcp: whose is it?
                return DROP
            inner = self.inner.filter(message)  # the caller's view first (task ids, shapes)
            if inner is DROP:
                return DROP
            message = inner if inner is not None else message
            if "id" in message:  # the server asks the client: under an id of ours
                ours = self.session.outward_upcall(server, message["id"], _token(message))
                return {**message, "id": ours}
            if method == "notifications/cancelled":  # of a request of this server's alone
                cancelled = self._cancelled(message)
                return cancelled if cancelled is not None else DROP
            if method == RESOURCE_NEWS and not self.catalogue.owns_news(server, message):
                return DROP  # news of another server's resource: not this one's to give
            return inner
        shown = self.inner.filter(message)
        if shown is None or shown is DROP or not isinstance(shown.get("result"), dict):
            return shown
        tools = shown["result"].get("tools")
        # Only a listing's tools (as the caller's view reads them): the "tools" of another
        # request's result are its own content, passed as it is. They were renamed too, and
        # items that were no objects failed the call with an internal error (red-team wave 59).
        if not isinstance(tools, list) or self.inner.method not in (None, "tools/list"):
            return shown
        renamed = [
            {**t, "name": self.names.outward(server, t["name"])}
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ]
        return {**shown, "result": {**shown["result"], "tools": renamed}}

    def _cancelled(self, message: dict[str, Any]) -> Any | None:
        params = message.get("params")
        if not isinstance(params, dict) or "requestId" not in params:
            return None
        ours = self.session.known_upcall(self.inner.server, params["requestId"])
        if ours is None:
            return None
        return {**message, "params": {**params, "requestId": ours}}


def _token(message: dict[str, Any]) -> Any:
    """A request's progress token (``params._meta.progressToken``), if it names one."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


class RoutedView(ClientView):
    """A 2026-07-28 client's view of one server's answer to a request ``/mcp`` routed to it:
    the relay's, and news of a resource only from the server that owns it (as the handshake
    era and the listen check; a call's stream from one server told the client another's
    resource had changed: red-team wave 66)."""

    __slots__ = ("catalogue",)

    def __init__(self, gw: Gateway, server: str, identity: Identity, catalogue: Catalogue) -> None:
        super().__init__(gw, server, identity)
        self.catalogue = catalogue

    def wants(self, data: bytes) -> bool:
        # Every message with a method is read, as on the handshake era's streams: a test of
        # the bytes missed a method spelled with escapes ("notifications\/resources\/...",
        # red-team wave 68).
        return b'"method"' in data or super().wants(data)

    def filter(self, message: Any) -> Any | None:
        if (
            isinstance(message, dict)
            and message.get("method") == RESOURCE_NEWS
            and not self.catalogue.owns_news(self.server, message)
        ):
            return DROP
        return super().filter(message)
