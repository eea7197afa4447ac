"""An MCP server that follows JSON-RPC to the letter, written by hand for the attack corpus.

It serves Streamable HTTP at ``/mcp`` (stateless, JSON answers) and runs every message that
names a method, notifications included: JSON-RPC 2.0 says the server processes a notification
and only sends no answer. A ``tools/call`` "notification" therefore runs here, which is what a
gateway that gates policy on the presence of an id would miss. Every call that ran is written
to ``UPSTREAM_CALL_LOG`` (one JSON line, flushed at once), with ``"notification": true`` when
it came without an id.

``LITERAL_ID_MODE`` makes the answers' ids lie the way real peers do: ``float`` echoes integer
ids as a JavaScript ``JSON.parse`` peer would (rounded through a double, written with ``.0``),
``string`` echoes them as strings. A gateway that filters ``tools/list`` by the echoed id lets
the whole list through to such a peer's callers.

``LITERAL_SCRIPT`` names a JSON file read again on every request, for an upstream that changes
what it says while the gateway runs: ``pages`` (a list of pages of tools; ``tools/list`` is
paged with cursors ``"1"``, ``"2"``...) replaces ``TOOLS``, and ``call_extra`` is merged into
every ``tools/call`` result. ``list_as`` sends ``tools/list`` answers in another dress: ``sse``
(a stream), ``sse-bom`` (a stream that opens with a byte-order mark), ``sse-utf16`` (a stream
declared and written as UTF-16LE), ``json-utf16`` (JSON declared and written as UTF-16LE) or
``json-utf16-bare`` (UTF-16LE with no charset, which Python's ``json`` still reads),
``sse-charset-star`` (a charset in RFC 2231 spelling), ``sse-two-types`` (two Content-Type
headers) or ``sse-params`` (a stream declared in mixed case, with a quoted UTF-8 charset).
``cursor_names`` (true) makes each page's cursor name the page's last tool (``"1:add"``),
as a server paging by name does. ``results`` maps a method to the result answered as is
(``{"tools/list": {"tools": 5}}``), ``errors`` to an error answered as is.
``endless`` (``{"per_page": 50, "cursor": "next"}``, or ``"same"``) pages ``tools/list`` for
ever, each page naming the next (or the same cursor again). ``instructions_for_client`` makes
``initialize`` answer instructions naming the session's client (``clientInfo.name``), as a
server whose instructions depend on the session would. ``stall`` maps a method to an answer
whose head comes and whose body never ends: ``"json"`` (a Content-Length past the half that
is sent), ``"drip"`` (a chunked JSON body sending a space every 0.2 s, never ending) or
``"notice"`` (a 202 declaring 10 bytes and sending none). ``raw_replace`` (pairs of texts)
rewrites every JSON answer's text as written, for what ``json.dumps`` cannot write
(``[["\\"@INF@\\"", "1e999"]]``). ``ask_always`` answers every ``tools/call`` with
``input_required`` (a tool that asks for more input at every round). ``big_list``
(``{"mib": 40}``, with ``"gzip": true`` to send it compressed) answers ``tools/list`` with one
tool whose description is that many MiB.

    python -m tests.servers.literal --port 9000
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOLS = [
    {"name": name, "description": f"{name} (literal server)", "inputSchema": {"type": "object"}}
    for name in ("echo", "add", "delete_item", "write_file", "calls_seen")
]
_lock = threading.Lock()


def _log_call(params: dict[str, Any], notification: bool) -> None:
    path = os.environ.get("UPSTREAM_CALL_LOG")
    if not path:
        return
    record = {
        "tool": params.get("name"),
        "arguments": params.get("arguments"),
        "notification": notification,
        "pid": os.getpid(),
    }
    if "requestState" in params:
        record["requestState"] = params["requestState"]
    with _lock, open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _echo_id(msg_id: Any) -> Any:
    mode = os.environ.get("LITERAL_ID_MODE", "")
    if isinstance(msg_id, int) and not isinstance(msg_id, bool):
        if mode == "float":
            return float(msg_id)
        if mode == "string":
            return str(msg_id)
    return msg_id


def _script() -> dict[str, Any]:
    path = os.environ.get("LITERAL_SCRIPT")
    if not path:
        return {}
    with open(path, encoding="utf-8") as file:
        script: dict[str, Any] = json.load(file)
    return script


def _tools_page(cursor: Any) -> dict[str, Any]:
    head = cursor.partition(":")[0] if isinstance(cursor, str) else ""
    index = int(head) if head.isdigit() else 0
    endless = _script().get("endless")
    if endless:  # {"per_page": n, "cursor": "next" or "same"}: pages that never end
        tools = [
            {"name": f"t{index}_{n}", "inputSchema": {"type": "object"}}
            for n in range(endless["per_page"])
        ]
        following = str(index + 1) if endless.get("cursor") == "next" else "1"
        return {"tools": tools, "nextCursor": following}
    pages = _script().get("pages") or [TOOLS]
    page: dict[str, Any] = {"tools": pages[min(index, len(pages) - 1)], "cacheScope": "public"}
    if index + 1 < len(pages):
        page["nextCursor"] = str(index + 1)
        if _script().get("cursor_names") and page["tools"]:  # "1:<the page's last name>"
            page["nextCursor"] += ":" + str(page["tools"][-1].get("name"))
    return page


def run(method: str, params: dict[str, Any], notification: bool) -> Any:
    """The result of one method, or None when the method is unknown."""
    given = (_script().get("results") or {}).get(method)
    if given is not None:  # whatever the script says, however odd
        return given
    if method == "initialize":
        result = {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "literal", "version": "1.0.0"},
        }
        if _script().get("instructions_for_client"):  # what this session's client said
            info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
            result["instructions"] = f"session of {info.get('name')}"
        return result
    if method == "server/discover":
        return {
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "literal", "version": "1.0.0"},
            "resultType": "complete",
        }
    if method == "tools/list":
        return _tools_page(params.get("cursor"))
    if method == "tools/call":
        _log_call(params, notification)
        if _script().get("ask_always"):  # every call, every round: more input wanted
            schema = {"type": "object", "properties": {}}
            asked = {
                "method": "elicitation/create",
                "params": {"message": "more?", "requestedSchema": schema},
            }
            state = f"up-{len(str(params.get('requestState', '')))}"
            return {
                "resultType": "input_required",
                "inputRequests": {"more": asked},
                "requestState": state,
            }
        text = json.dumps(params.get("arguments"))
        extra = _script().get("call_extra") or {}
        return {"content": [{"type": "text", "text": text}], "isError": False, **extra}
    if method == "ping" or method.startswith("notifications/"):
        return {}
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, payload: Any = None) -> None:
        text = "" if payload is None else json.dumps(payload)
        for was, now in _script().get("raw_replace") or []:  # what json.dumps cannot write
            text = text.replace(was, now)
        body = text.encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(
            405, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}}
        )

    do_DELETE = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            message = json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(
                400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}
            )
            return
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            self._answer(202)  # an answer to a request of ours (we send none), or junk
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        stall = (_script().get("stall") or {}).get(message["method"])
        if stall:
            self._stalled(stall, message.get("id"))
            return
        notification = "id" not in message
        result = run(message["method"], params, notification)
        if notification:
            self._answer(202)
            return
        msg_id = _echo_id(message["id"])
        given = (_script().get("errors") or {}).get(message["method"])
        if given is not None:  # the error the script says, however odd
            self._answer(200, {"jsonrpc": "2.0", "id": msg_id, "error": given})
            return
        if result is None:
            error = {"code": -32601, "message": "Method not found"}
            self._answer(200, {"jsonrpc": "2.0", "id": msg_id, "error": error})
            return
        answer = {"jsonrpc": "2.0", "id": msg_id, "result": result}
        big = _script().get("big_list") if message["method"] == "tools/list" else None
        if big:
            self._big(msg_id, big)
            return
        dress = _script().get("list_as") if message["method"] == "tools/list" else None
        if dress:
            self._dressed(dress, json.dumps(answer))
            return
        self._answer(200, answer)

    def _big(self, msg_id: Any, big: dict[str, Any]) -> None:
        text = "x" * (big["mib"] << 20)
        tool = {"name": "big", "description": text, "inputSchema": {"type": "object"}}
        answer = {"jsonrpc": "2.0", "id": msg_id, "result": {"tools": [tool]}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if big.get("gzip"):
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the reader may stop early
            self.wfile.write(body)

    def _stalled(self, how: str, msg_id: Any) -> None:
        if how == "drip":
            self._drip()
            return
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {}}).encode()
        self.send_response(202 if how == "notice" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(10 if how == "notice" else len(body)))
        self.end_headers()
        if how != "notice":
            self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.rfile.read(1)  # until the gateway gives up and closes (or the process ends)
        self.close_connection = True

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            while True:  # until the gateway gives up and closes
                self.wfile.write(b"1\r\n \r\n")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            self.close_connection = True

    def _dressed(self, dress: str, text: str) -> None:
        content_type, body = {
            "sse": ("text/event-stream", f"data: {text}\n\n".encode()),
            "sse-bom": ("text/event-stream", f"\ufeffdata: {text}\n\n".encode()),
            "sse-utf16": (
                "text/event-stream; charset=utf-16le",
                f"data: {text}\n\n".encode("utf-16-le"),
            ),
            "json-utf16": ("application/json; charset=utf-16le", text.encode("utf-16-le")),
            "json-utf16-bare": ("application/json", text.encode("utf-16-le")),
            "sse-charset-star": (
                "text/event-stream; charset*=utf-8''utf-7",
                f"data: {text}\n\n".encode(),
            ),
            "sse-two-types": (
                "text/event-stream; x=y\na/b; charset=utf-7",
                f"data: {text}\n\n".encode(),
            ),
            "sse-params": ('Text/Event-Stream; Charset="UTF-8"', f"data: {text}\n\n".encode()),
        }[dress]
        self.send_response(200)
        for one in content_type.split("\n"):  # two lines: two Content-Type headers
            self.send_header("content-type", one)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.literal")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
