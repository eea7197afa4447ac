"""A request body of nothing but tiny containers (``[[],[],...]``) is parsed with the cyclic
garbage collector paused: it ran every 700 new lists and walked the young ones each time,
and such a body of 4 MiB held the loop every caller shares for 1.8 s (five to twelve times
a body of numbers of the same size)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from typing import Any

from gateway.wire.jsonrpc import GC_PAUSE_CHARS, parse_body


def _collections_during(work: Callable[[], object]) -> int:
    """How many collections the garbage collector ran while ``work`` ran."""
    runs = 0

    def counted(phase: str, _info: dict[str, Any]) -> None:
        nonlocal runs
        runs += phase == "start"

    gc.callbacks.append(counted)
    try:
        work()
    finally:
        gc.callbacks.remove(counted)
    return runs


def _call(arguments: object) -> bytes:
    params = {"name": "t", "arguments": {"x": arguments}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    ).encode()


def test_no_collection_runs_while_a_large_body_is_parsed() -> None:
    body = _call([[] for _ in range(200_000)])
    assert len(body) > GC_PAUSE_CHARS
    assert _collections_during(lambda: parse_body(body)) == 0
    assert gc.isenabled()  # and it runs again after


def test_a_large_body_that_fails_to_parse_leaves_the_collector_running() -> None:
    body = _call([[] for _ in range(200_000)])[:-1]
    try:
        parse_body(body)
    except Exception as exc:  # the parser's refusal
        assert "invalid JSON" in str(exc)
    assert gc.isenabled()


def test_every_parse_of_a_peers_json_pauses_the_collector() -> None:
    """A stdio server's bridge parsed the relay's body again, with the collector running: a
    body of tiny lists to /mcp/<stdio server> held the loop 2.1 s where the relay took 0.3."""
    from gateway.wire.jsonrpc import loads

    body = _call([[] for _ in range(200_000)])
    assert _collections_during(lambda: loads(body)) == 0
    assert _collections_during(lambda: loads(body.decode(), object_pairs_hook=dict)) == 0
    assert gc.isenabled()


def test_an_answers_head_builds_no_huge_id() -> None:
    """Whether a stream's first event is the whole answer was decided by decoding its id and
    method as any JSON: an id of 4 MiB of tiny lists was built with the collector running
    (two seconds of the shared loop at every answer)."""
    from gateway.wire.sse import answer_alone

    huge = json.dumps([[] for _ in range(200_000)])
    event = f'data: {{"jsonrpc":"2.0","id":{huge},"result":{{}}}}'.encode()
    assert _collections_during(lambda: answer_alone(event, 5)) == 0
    assert answer_alone(event, 5) is None
    assert answer_alone(b'data: {"jsonrpc":"2.0","id":5,"result":{}}', 5) is not None
