"""Upstream answers the caller's view must read as the caller would: a tools list sent as a
stream with a byte-order mark, declared in another charset, or written in UTF-16 is filtered
or refused, never passed on unread; a tool whose definition is not Unicode text is left out
rather than making a whole list unreadable; and a server that asks the client something
while the aggregate lists its tools is answered, not left waiting with every caller's list.
Real gateway processes; the hand-written literal server and the SDK test upstream."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.edge.clientview import MAX_LISTED_TOOLS
from gateway.wire.sse import DROP, SseRewriter, filtered, one_line
from tests.gateway_proc import GatewayProcess, calls_in, client, run_gateway
from tests.peers import http_upstream, literal_upstream

MODERN = "2026-07-28"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n  "odd*": {}\n'
TOOLS = [
    {"name": "echo", "description": "Echoes", "inputSchema": {"type": "object"}},
    {"name": "secret_tool", "description": "Not for agents", "inputSchema": {"type": "object"}},
]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp = tmp_path_factory.mktemp("encodings")
    script = tmp / "script.json"
    script.write_text(json.dumps({"pages": [TOOLS]}))
    with (
        literal_upstream({"LITERAL_SCRIPT": str(script)}) as lit,
        run_gateway(tmp, POLICY, {"lit": {"url": lit.url}}) as gw,
    ):
        yield gw, script


def _list(gw: GatewayProcess, path: str) -> httpx.Response:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/list",
    }
    return httpx.post(gw.base + path, json=body, headers=headers, timeout=10)


def _as_a_client_reads(resp: httpx.Response) -> str:
    """The answer's text, decoded the way a lenient client would (the declared charset, else
    whatever Python's json guesses)."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return json.dumps(json.loads(resp.content))
    return resp.text


@pytest.mark.parametrize(
    "dress",
    [
        "sse",
        "sse-bom",
        "sse-params",
        "sse-utf16",
        "sse-charset-star",
        "sse-two-types",
        "json-utf16",
        "json-utf16-bare",
    ],
)
@pytest.mark.parametrize("path", ["/mcp/lit", "/mcp"])
def test_a_list_in_any_dress_is_filtered_or_refused(
    rig: tuple[GatewayProcess, Path], dress: str, path: str
) -> None:
    gw, script = rig
    script.write_text(json.dumps({"pages": [TOOLS], "list_as": dress}))
    try:
        resp = _list(gw, path)
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        assert "secret_tool" not in _as_a_client_reads(resp)
    assert "secret_tool" not in resp.content.decode("utf-16-le", "replace")
    if dress in ("sse", "sse-bom", "sse-params"):  # read as clients read it, filtered, served
        assert resp.status_code == 200 and "echo" in resp.text
    else:  # refused: a type or charset another reader could read otherwise
        assert resp.status_code == 502 or "echo" not in resp.text
    # one Content-Type, the one the gateway read the body as, with nothing a client could
    # read otherwise
    assert resp.headers.get_list("content-type") in (["text/event-stream"], ["application/json"])


def test_a_tool_that_is_not_unicode_is_left_out(rig: tuple[GatewayProcess, Path]) -> None:
    gw, script = rig
    cut = {"name": "echo", "description": "half an emoji \ud83d", "inputSchema": {}}
    script.write_text(json.dumps({"pages": [[cut, TOOLS[1]]]}))
    try:
        for path in ("/mcp/lit", "/mcp"):
            resp = _list(gw, path)
            assert resp.status_code == 200
            data = resp.text.split("data: ")[-1] if "data: " in resp.text else resp.text
            assert json.loads(data)["result"]["tools"] == []
            resp.content.decode()  # strict UTF-8, as pydantic reads it
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))


ESCAPED = '"\\u005f_proto__"'


@pytest.mark.parametrize(
    "extra",
    [
        {"__proto__": {"x": 1}},
        {"inputSchema": {"type": "object", "__proto__": {"type": "string"}}},
        {"annotations": {"deep": [{"@PROTO@": 1}]}},  # written "\\u005f_proto__"
    ],
)
def test_a_tool_with_a_proto_key_is_never_listed(
    rig: tuple[GatewayProcess, Path], extra: dict[str, Any]
) -> None:
    """A JavaScript client's schema library makes a ``__proto__`` key the object's
    prototype. The relay refuses such a list whole; ``/mcp`` merged the tool as it came."""
    gw, script = rig
    odd = {"name": "echo", "description": "d", "inputSchema": {"type": "object"}, **extra}
    pages = [[odd, {**odd, "name": "odd_p"}, {**TOOLS[0], "name": "odd1"}]]
    script.write_text(json.dumps({"pages": pages, "raw_replace": [['"@PROTO@"', ESCAPED]]}))
    try:
        for path in ("/mcp/lit", "/mcp"):
            resp = _list(gw, path)
            assert "__proto__" not in resp.text and "u005f" not in resp.text
            data = resp.text.split("data: ")[-1] if "data: " in resp.text else resp.text
            if path == "/mcp":  # the others are kept
                assert [t["name"] for t in json.loads(data)["result"]["tools"]] == ["lit__odd1"]
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))
    assert gw.records("tools.proto_key")


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is no JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_tool_with_a_number_past_a_double_is_left_out_and_never_a_rug_pull(
    rig: tuple[GatewayProcess, Path],
) -> None:
    """``1e999`` is valid JSON read as infinity: relayed in a list it was written
    ``Infinity``, which no strict client reads (one tool made the whole list unreadable),
    and the catalogue's first sight (the SDK's client writes it as null) and a list's had two
    digests: a false ``pins.changed`` for a tool that never changed, at every list."""
    gw, script = rig
    odd = {"name": "odd_inf", "inputSchema": {"type": "object", "maximum": "@INF@"}}
    plain = {"name": "odd_plain", "inputSchema": {"type": "object"}}
    script.write_text(json.dumps({"pages": [[odd, plain]], "raw_replace": [['"@INF@"', "1e999"]]}))
    changed_before = len(gw.records("pins.changed"))
    try:
        for path, kept in (("/mcp/lit", "odd_plain"), ("/mcp", "lit__odd_plain")):
            for _ in range(2):
                resp = _list(gw, path)
                assert resp.status_code == 200
                data = resp.text.split("data: ")[-1] if "data: " in resp.text else resp.text
                assert [t["name"] for t in _strict(data)["result"]["tools"]] == [kept]
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))
    assert len(gw.records("pins.changed")) == changed_before
    assert gw.records("tools.not_json")


def test_a_name_no_call_could_use_is_not_listed(rig: tuple[GatewayProcess, Path]) -> None:
    gw, script = rig
    odd = [
        {"name": name, "description": "d", "inputSchema": {"type": "object"}}
        for name in ("odd\x1b[2Jx", "odd\u202eevil", "odd\u200b", "odd" + "x" * 2000, "oddly")
    ]
    script.write_text(json.dumps({"pages": [odd]}))
    try:
        for path, name in (("/mcp/lit", "oddly"), ("/mcp", "lit__oddly")):
            resp = _list(gw, path)
            data = resp.text.split("data: ")[-1] if "data: " in resp.text else resp.text
            assert [t["name"] for t in json.loads(data)["result"]["tools"]] == [name]
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))


class TestStreams:
    """The stream reader, by itself."""

    class View:
        def wants(self, data: bytes) -> bool:
            return b'"tools"' in data

        def filter(self, message: Any) -> Any:
            tools = [t for t in message["result"]["tools"] if t["name"] == "echo"]
            return {**message, "result": {"tools": tools}}

        def wrap_event_id(self, event_id: bytes) -> bytes:
            return event_id

    LIST = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}).encode()

    @pytest.mark.parametrize("cut", [1, 2, 3, 5])
    def test_a_byte_order_mark_is_skipped_wherever_the_chunk_ends(self, cut: int) -> None:
        stream = b"\xef\xbb\xbfdata: " + self.LIST + b"\n\n"
        rewriter = SseRewriter(self.View())
        out = rewriter.feed(stream[:cut]) + rewriter.feed(stream[cut:])
        assert out.startswith(b"data: ") and b"secret_tool" not in out and b"echo" in out

    def test_fields_nobody_knows_are_left_out(self) -> None:
        note = b'data: {"jsonrpc": "2.0", "method": "notifications/x"}\n\n'
        stream = b"\xef\xbb\xbfdata: x\n\n" + b"Data: " + self.LIST + b"\nevent: message\n" + note
        out = SseRewriter(self.View()).feed(stream)
        assert b"secret_tool" not in out and b"event: message" in out

    @pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x1c", "\x0b", "\x0c"])
    def test_a_comment_holding_a_line_break_of_some_readers_goes_empty(self, sep: str) -> None:
        """A reader that splits lines as Python's ``splitlines`` does (httpx-sse 0.4.1, the
        MCP Python SDK 1.x's) read a comment's text past such a character as a message no
        view had seen: a tools list naming a hidden tool (red-team wave 69). A comment goes
        on as it came only when it is printable ASCII."""
        smuggled = (": " + sep + "data: " + self.LIST.decode() + "\n\n").encode()
        view = self.View()
        out = SseRewriter(view).feed(smuggled + b"data: " + self.LIST + b"\n\n")
        assert b"secret_tool" not in out and out.startswith(b":\n")
        assert SseRewriter(view).feed(b": keep-alive\n\n") == b": keep-alive\n\n"

    @pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"])
    def test_no_line_break_of_some_readers_goes_on_in_data_or_an_id(self, sep: str) -> None:
        """JSON holds U+2028, U+2029 and U+0085 raw in its strings; a reader splitting as
        ``splitlines`` does read what a string held past two of them as an event of its own,
        and an event id holding one as fields of the upstream's making (red-team wave 69)."""
        smuggle = sep * 2 + "data: " + self.LIST.decode() + sep * 2
        content = [{"type": "text", "text": smuggle}]
        call = {"jsonrpc": "2.0", "id": 2, "result": {"content": content}}
        stream = (
            "id: e" + sep + "data: x\ndata: " + json.dumps(call, ensure_ascii=False) + "\n\n"
        ).encode()
        out = SseRewriter(self.View()).feed(stream)
        assert sep.encode() not in out and b"id:" not in out
        data = json.loads(out.split(b"data: ", 1)[1])
        assert data["result"]["content"][0]["text"] == smuggle  # the same text, escaped
        assert sep.encode() not in one_line(json.dumps(call, ensure_ascii=False).encode())

    PROTO = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"__proto__": {"tools": TOOLS}}})

    @pytest.mark.parametrize(
        "data",
        [
            LIST.decode().encode("utf-16-le"),
            LIST + b"\x00",
            b"\xff\xfe" + LIST,
            PROTO.encode(),  # a JavaScript client reads the prototype's tools as the result's
            PROTO.replace("__proto__", "\\u005f_proto__").encode(),
            json.dumps([json.loads(PROTO)]).encode(),
        ],
    )
    def test_bytes_not_read_as_a_client_would_are_dropped(self, data: bytes) -> None:
        assert filtered(data, self.View()) is DROP


async def test_a_server_asking_during_a_merged_list_is_answered(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    env = {"UPSTREAM_LIST_ASKS": "1", "UPSTREAM_CALL_LOG": str(log)}

    async def accept(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"set": "all"})

    with (
        http_upstream(extra_env=env) as asks,
        http_upstream() as plain,
        run_gateway(tmp_path, POLICY, {"ask": {"url": asks.url}, "web": {"url": plain.url}}) as gw,
    ):
        async with client(gw.base + "/mcp", mode="legacy", elicitation_callback=accept) as c:
            with anyio.fail_after(20):
                listed = {t.name for t in (await c.list_tools()).tools}
        assert {"ask__echo", "web__echo"} <= listed
        # the merged list's question was refused at once (the gateway's own listing at start,
        # which declares no elicitation, is refused by the server's SDK itself)
        asked = [r for r in calls_in(log) if r.get("event") == "list_asked"]
        assert "there is no client to ask" in asked[-1]["refused"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_merged_list_no_server_gave_is_an_error(
    rig: tuple[GatewayProcess, Path], mode: str
) -> None:
    """Not an empty list, which would read as "the policy allows nothing"."""
    gw, script = rig
    script.write_text(json.dumps({"pages": [TOOLS], "list_as": "json-utf16"}))
    try:
        async with client(gw.base + "/mcp", mode=mode) as c:
            with pytest.raises(MCPError, match="no server behind /mcp answered"):
                await c.list_tools()
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))


def test_a_merged_list_no_server_gave_is_read_by_every_client(
    rig: tuple[GatewayProcess, Path],
) -> None:
    """Answered 502, the TypeScript SDK and the Inspector took it for a broken transport and
    never read the error: -32001 under HTTP 200, in both eras, as every upstream failure."""
    gw, script = rig
    script.write_text(json.dumps({"pages": [TOOLS], "list_as": "json-utf16"}))
    try:
        modern = _list(gw, "/mcp")
        assert modern.status_code == 200 and modern.json()["error"]["code"] == -32001
        info = {"name": "raw", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        accept = {"accept": "application/json, text/event-stream"}
        with httpx.Client(base_url=gw.base, headers=accept, timeout=10) as http:
            session = http.post("/mcp", json=init).headers["mcp-session-id"]
            headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
            done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert http.post("/mcp", json=done, headers=headers).status_code == 202
            listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            legacy = http.post("/mcp", json=listed, headers=headers)
        assert legacy.status_code == 200 and '"code":-32001' in legacy.text.replace(" ", "")
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))


def test_a_page_of_more_tools_than_the_bound_is_shown_empty(
    rig: tuple[GatewayProcess, Path],
) -> None:
    """Each listed tool is digested and decided on the loop every caller shares: a page past
    ``MAX_LISTED_TOOLS`` (100,000 held it for seconds) is shown empty, and logged."""
    gw, script = rig
    many = [
        {"name": f"odd{n}", "description": "d", "inputSchema": {"type": "object"}}
        for n in range(MAX_LISTED_TOOLS + 1)
    ]
    script.write_text(json.dumps({"pages": [many]}))
    try:
        resp = _list(gw, "/mcp/lit")
        data = resp.text.split("data: ")[-1] if "data: " in resp.text else resp.text
        assert json.loads(data)["result"]["tools"] == []
        assert gw.wait_records(1, "tools.too_many")
    finally:
        script.write_text(json.dumps({"pages": [TOOLS]}))
