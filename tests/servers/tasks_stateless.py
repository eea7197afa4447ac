"""A stateless 2026-07-28 MCP server with the tasks extension (SEP-2663), by hand: one task
store for every caller (a gateway's agents reach it as one client), ``tools/call`` of ``keep``
makes a task that waits for input, ``tasks/update`` records the answer, ``tasks/get`` tells a
task with its result, and ``subscriptions/listen`` acknowledges what it was asked (of the
tasks named, those it has) and sends ``notifications/tasks`` (result inline), and a log line
tagged with the task (``related-task``), for the tasks it names, or for every task when it
names none; ``GET`` is a stream of every task's status (one for every
caller). Every request is written to ``TASKS_LOG`` (one JSON line). ``TASKS_SESSION_ID``:
a 2025-11-25 ``initialize`` is answered with that one session id, whoever asks (a server
behind a proxy that pins one session), and its GET stream is still every task's.
``TASKS_ACK``: the params of every listen's acknowledgement (JSON), whatever was asked;
``TASKS_ACK_AGAIN``: those of a second acknowledgement, sent after the first (a list: those
messages as one batch event).

    python -m tests.servers.tasks_stateless --port 9000
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
TOOLS = [
    {"name": "keep", "inputSchema": {"type": "object", "properties": {"note": {"type": "string"}}}}
]
_store: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def _log(body: Any) -> None:
    path = os.environ.get("TASKS_LOG")
    if path:
        with _lock, open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(body) + "\n")


def _done(task_id: str) -> dict[str, Any]:
    note = _store[task_id]["note"]
    return {"content": [{"type": "text", "text": f"note: {note}"}]}


def result_of(method: str, params: dict[str, Any]) -> dict[str, Any]:
    complete = {"resultType": "complete"}
    if method == "server/discover":
        capabilities = {"tools": {}, "extensions": {TASKS: {}}}
        info = {"name": "tasks-stateless", "version": "1"}
        return {**complete, "supportedVersions": [VERSION], "capabilities": capabilities,
                "serverInfo": info}  # fmt: skip
    if method == "initialize":
        capabilities = {"tools": {}, "tasks": {"requests": {"tools": {"call": {}}}}}
        info = {"name": "tasks-stateless", "version": "1"}
        return {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": info}
    if method == "tools/list":
        return {**complete, "tools": TOOLS, "ttlMs": 0, "cacheScope": "private"}
    if method == "tools/call":
        with _lock:
            task_id = f"task-{len(_store) + 1}"
            _store[task_id] = {"note": (params.get("arguments") or {}).get("note"), "answer": None}
        return {"resultType": "task", "taskId": task_id, "status": "input_required",
                "ttlMs": 60000}  # fmt: skip
    if method == "tasks/update":
        task = _store.get(str(params.get("taskId")))
        if task is not None:
            task["answer"] = params.get("inputResponses")
        return complete
    if method == "tasks/get":
        task_id = str(params.get("taskId"))
        if task_id not in _store:
            return {}
        return {**complete, "taskId": task_id, "status": "completed", "result": _done(task_id)}
    return complete


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        _log(body)
        method, params, msg_id = body.get("method"), body.get("params") or {}, body.get("id")
        if msg_id is None:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if method == "subscriptions/listen":
            self._listen(params, msg_id)
            return
        data = json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result_of(method, params)})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if method == "initialize" and os.environ.get("TASKS_SESSION_ID"):
            self.send_header("mcp-session-id", os.environ["TASKS_SESSION_ID"])
        self.end_headers()
        self.wfile.write(data.encode())

    def do_GET(self) -> None:
        """The server's own stream, one for every caller (it keeps no sessions): the status of
        every task, each with a log line tagged with it, then the stream ends."""
        self._events(_task_events(None))

    def _listen(self, params: dict[str, Any], msg_id: Any) -> None:
        asked = params.get("notifications") or {}
        named = asked.get("taskIds")
        honoured = dict(asked)  # all it was asked, of the tasks those it has
        if isinstance(named, list):
            honoured["taskIds"] = [i for i in named if i in _store]
        ack = json.loads(os.environ.get("TASKS_ACK") or "null") or {"notifications": honoured}
        events = [
            {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": ack}
        ]
        again = json.loads(os.environ.get("TASKS_ACK_AGAIN") or "null")
        if isinstance(again, list):  # messages of its own, as one batch event
            events.append(again)  # type: ignore[arg-type]
        elif again is not None:
            method = "notifications/subscriptions/acknowledged"
            events.append({"jsonrpc": "2.0", "method": method, "params": again})
        events += _task_events(named)
        events.append({"jsonrpc": "2.0", "id": msg_id, "result": {"resultType": "complete"}})
        self._events(events)

    def _events(self, events: list[dict[str, Any]]) -> None:
        data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _task_events(named: list[str] | None) -> list[dict[str, Any]]:
    """Each task's status (result inline) and a log line tagged with it: of the tasks named,
    or of every task when none are."""
    events: list[dict[str, Any]] = []
    for task_id in list(_store):
        if named is None or task_id in named:
            status = {"taskId": task_id, "status": "completed", "result": _done(task_id)}
            events.append({"jsonrpc": "2.0", "method": "notifications/tasks", "params": status})
            meta = {"io.modelcontextprotocol/related-task": {"taskId": task_id}}
            line = {"level": "info", "data": f"working on {task_id}", "_meta": meta}
            events.append({"jsonrpc": "2.0", "method": "notifications/message", "params": line})
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
