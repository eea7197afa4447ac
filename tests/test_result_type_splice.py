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
from gateway.wire.sse import MAX_MENDED_BYTES, filtered, with_result_type

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
