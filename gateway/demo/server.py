"""celgate-demo: a tiny in-memory notes store, served over MCP.

Tools, by kind (the annotations tell the gateway what each one does):

- read: ``list_notes``, ``get_note``, ``search_notes`` (readOnlyHint)
- write: ``create_note``, ``update_note``
- destructive: ``delete_note`` (destructiveHint)
- execute: ``run_report`` (computes a report over the store)

State lives in the process and is lost on exit; each server built by
:func:`build_demo_server` has its own store.
"""

from __future__ import annotations

import hmac
import itertools
import os
from collections import Counter
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel

SERVER_NAME = "celgate-demo"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8788
MCP_PATH = "/mcp"

ReportKind = Literal["summary", "word_count", "top_words"]

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)
EXECUTE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)


class Note(BaseModel):
    id: str
    title: str
    body: str


class NoteList(BaseModel):
    notes: list[Note]


class Report(BaseModel):
    kind: str
    text: str


class NoteStore:
    """The in-memory store behind the tools."""

    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}
        self._ids = itertools.count(1)

    def all(self) -> list[Note]:
        return list(self._notes.values())

    def get(self, note_id: str) -> Note:
        try:
            return self._notes[note_id]
        except KeyError:
            raise ToolError(f"no note with id {note_id!r}") from None

    def create(self, title: str, body: str) -> Note:
        note = Note(id=str(next(self._ids)), title=title, body=body)
        self._notes[note.id] = note
        return note

    def update(self, note_id: str, body: str) -> Note:
        note = self.get(note_id).model_copy(update={"body": body})
        self._notes[note_id] = note
        return note

    def delete(self, note_id: str) -> Note:
        note = self.get(note_id)
        del self._notes[note_id]
        return note

    def search(self, query: str) -> list[Note]:
        q = query.casefold()
        return [
            n for n in self._notes.values() if q in n.title.casefold() or q in n.body.casefold()
        ]


def _report(store: NoteStore, kind: ReportKind) -> Report:
    notes = store.all()
    words = [w.casefold() for n in notes for w in f"{n.title} {n.body}".split()]
    if kind == "summary":
        text = f"{len(notes)} notes: " + ", ".join(f"{n.id}:{n.title}" for n in notes)
    elif kind == "word_count":
        text = f"{len(words)} words in {len(notes)} notes"
    else:
        text = ", ".join(f"{w} ({c})" for w, c in Counter(words).most_common(5))
    return Report(kind=kind, text=text)


def build_demo_server(*, seed: bool = True) -> MCPServer:
    """A fresh demo server with its own store (seeded with two notes unless ``seed=False``)."""
    store = NoteStore()
    if seed:
        store.create("Welcome", "celgate sits between agents and their MCP servers.")
        store.create("Policy", "Rules decide which tool calls go through.")

    server: MCPServer = MCPServer(
        SERVER_NAME,
        version="0.1.0",
        instructions="A small notes store. Read freely; writes and deletes may need approval.",
        log_level="WARNING",
    )

    @server.tool(description="List all notes", annotations=READ)
    def list_notes() -> NoteList:
        return NoteList(notes=store.all())

    @server.tool(description="Get one note by id", annotations=READ)
    def get_note(id: str) -> Note:
        return store.get(id)

    @server.tool(description="Notes whose title or body contains the query", annotations=READ)
    def search_notes(query: str) -> NoteList:
        return NoteList(notes=store.search(query))

    @server.tool(description="Create a note", annotations=WRITE)
    def create_note(title: str, body: str) -> Note:
        return store.create(title, body)

    @server.tool(description="Replace a note's body", annotations=WRITE)
    def update_note(id: str, body: str) -> Note:
        return store.update(id, body)

    @server.tool(description="Delete a note for good", annotations=DESTRUCTIVE)
    def delete_note(id: str) -> Note:
        return store.delete(id)

    @server.tool(
        description="Run a report over all notes: summary, word_count or top_words",
        annotations=EXECUTE,
    )
    def run_report(kind: ReportKind = "summary") -> Report:
        return _report(store, kind)

    return server


#: The environment variable naming a secret every request must present as its bearer token
#: (``celgate run`` sets one the gateway alone knows): the demo's port is on loopback, where
#: every local process reaches it, and went round the gateway's policy (red-team wave 69).
SECRET_ENV = "CELGATE_DEMO_SECRET"


def _guarded(app: Any, secret: str) -> Any:
    """``app``, answering 401 to any HTTP request without ``Authorization: Bearer secret``."""
    wanted = f"Bearer {secret}".encode()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, wanted):
                headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": b"unauthorized\n"})
                return
        await app(scope, receive, send)

    return guarded


def _config(host: str, port: int, log_level: str) -> uvicorn.Config:
    app = build_demo_server().streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    secret = os.environ.get(SECRET_ENV)
    served = _guarded(app, secret) if secret else app
    return uvicorn.Config(served, host=host, port=port, log_level=log_level, lifespan="on")


async def serve_async(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning"
) -> None:
    """Serve the demo over Streamable HTTP at ``http://host:port/mcp`` until cancelled."""
    await uvicorn.Server(_config(host, port, log_level)).serve()


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning") -> None:
    """Blocking form of :func:`serve_async` (handles SIGINT/SIGTERM via uvicorn)."""
    uvicorn.Server(_config(host, port, log_level)).run()
