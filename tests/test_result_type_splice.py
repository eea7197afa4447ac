"""A 2026-07-28 result must name its ``resultType``; the gateway writes ``complete`` into one
that left it out. A long answer whose only want is that field has it written in without
being read whole and written again: a 60 MiB answer so held the loop every caller shares for
11 s (``benchmarks/bench_stdio_stall.py``). Anything else a view must read is still read."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.auth.guard import SessionSigner
from gateway.edge.clientview import ClientView
from gateway.policy import Identity
from gateway.wire.sse import (
    MAX_MENDED_BYTES,
    filtered,
    message_event,
    rewrite_event,
    with_result_type,
)

LONG = "x" * (MAX_MENDED_BYTES + 10)


def _view() -> ClientView:
    gw: Any = SimpleNamespace(signer=SessionSigner("k" * 64))
    view = ClientView(gw, "up", Identity(grant="a", agent="a"), None)
    view.modern = True
    view.for_request(1, {}, "tools/call")
    return view


def _answer(result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode()


@pytest.fixture
def unread(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The messages the view read whole (its ``filter``)."""
    read: list[Any] = []
    original = ClientView.filter

    def filter_spy(self: ClientView, message: Any) -> Any:
        read.append(message)
        return original(self, message)

    monkeypatch.setattr(ClientView, "filter", filter_spy)
    return read


def test_a_long_untold_answer_has_its_result_type_written_in_unread(unread: list[Any]) -> None:
    result = {"content": [{"type": "text", "text": LONG}], "isError": False}
    out = filtered(_answer(result), _view(), answer=True)
    assert isinstance(out, bytes) and not unread
    told = {"resultType": "complete", **result}
    assert json.loads(out) == {"jsonrpc": "2.0", "id": 1, "result": told}


def test_a_short_one_or_one_with_more_to_read_is_read(unread: list[Any]) -> None:
    short = filtered(_answer({"content": []}), _view(), answer=True)
    assert isinstance(short, bytes) and json.loads(short)["result"]["resultType"] == "complete"
    listed = {"content": [{"type": "text", "text": LONG}], "tools": []}  # a word to read for
    assert filtered(_answer(listed), _view(), answer=True) is not None
    assert len(unread) == 2


@pytest.mark.parametrize(
    ("text", "spliced"),
    [
        (b'{"jsonrpc":"2.0","id":"a","result":{}}', b'{"resultType":"complete"}'),
        (b'{"jsonrpc":"2.0","id":2,"result": { "a" : 1 } }', b'{"resultType":"complete","a" : 1 }'),
        (b'{"jsonrpc":"2.0","id":2,"result":[]}', None),
        (b'{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"m"}}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":{}}', None),
        (b'{"jsonrpc":"2.0","result":{}}', None),
    ],
)
def test_the_field_is_written_first_in_the_result(text: bytes, spliced: bytes | None) -> None:
    out = with_result_type(text)
    if spliced is None:
        assert out is None
    else:
        assert out is not None and out.endswith(b'"result":' + spliced + b"}")
        assert json.loads(out)["result"]["resultType"] == "complete"


def test_a_long_answer_over_several_data_lines_goes_on_one(unread: list[Any]) -> None:
    """An answer written over several ``data:`` lines is one message with line ends in its
    whitespace; spliced unread, they went into the one ``data:`` line the gateway writes, and
    a client read ``data: {...`` cut at the first (red-team wave 54)."""
    text = json.dumps({"content": [{"type": "text", "text": LONG}]}, indent=1)
    data = b'{"jsonrpc":"2.0","id":1,\n"result":' + text.encode() + b"\r\n}"
    event = b"event: message\n" + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    out = rewrite_event(event + b"\n", _view())
    lines = out.split(b"\n")
    assert lines[0] == b"event: message" and lines[1].startswith(b"data: {")
    assert lines[2:] == [b"", b""]  # one data line, then the event's end
    message = json.loads(lines[1][len(b"data: ") :])
    assert message["result"]["resultType"] == "complete"
    assert message["result"]["content"][0]["text"] == LONG
    assert unread == []


@pytest.mark.parametrize("body", [b'{\n  "jsonrpc": "2.0",\r\n  "id": 1\n}', b"\n{}\r"])
def test_a_message_event_is_one_data_line(body: bytes) -> None:
    """What an upstream wrote pretty-printed (an answer read whole, and held for approval)
    went into the event as it came: ``data: {`` and lines no client reads."""
    out = message_event(body)
    assert out.count(b"\n") == 3 and out.endswith(b"\n\n") and b"\r" not in out
    assert json.loads(out.split(b"\n")[1][len(b"data: ") :]) == json.loads(body)
