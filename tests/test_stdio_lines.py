"""A stdio child's stdout, read in chunks: lines as they end, and what unended lines hold
bounded, each and all together (sixteen children each writing 60 MiB with no newline pinned
1.2 GiB of the gateway, and a line over the limit stopped the reading for good)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.sections import ServerConfig
from gateway.upstream import stdio_child
from gateway.upstream.stdio_child import Child


async def _nothing(_message: dict[str, object], _raw: bytes) -> None:
    return None


def _child() -> Child:
    return Child(ServerConfig("st", command="true"), "st", _nothing)


async def _lines(reader: asyncio.StreamReader, child: Child) -> list[bytes]:
    return [line async for line in child._lines(reader)]


async def test_lines_come_whole_across_chunks_and_the_last_one_unended() -> None:
    reader = asyncio.StreamReader()
    for piece in (b'{"a":1}\n{"b"', b":2}\n\n{", b'"c":3}'):
        reader.feed_data(piece)
    reader.feed_eof()
    assert await _lines(reader, _child()) == [b'{"a":1}\n', b'{"b":2}\n', b"\n", b'{"c":3}']
    assert stdio_child._Unended.total == 0


async def test_a_line_past_the_limit_is_dropped_and_reading_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stdio_child, "LINE_LIMIT", 10)
    reader = asyncio.StreamReader()
    reader.feed_data(b"x" * 8)
    reader.feed_data(b"y" * 8 + b"z\n" + b'{"ok":1}\n')
    reader.feed_eof()
    assert await _lines(reader, _child()) == [b'{"ok":1}\n']
    assert stdio_child._Unended.total == 0


async def test_what_all_unended_lines_hold_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound the longest unended line is dropped, whoever's: the line that grew was,
    and one server's lines that never ended made every other stdio server's answers longer
    than one read dropped (red-team wave 62)."""
    monkeypatch.setattr(stdio_child, "MAX_ALL_PENDING_LINES", 20)
    first, second = asyncio.StreamReader(), asyncio.StreamReader()
    first.feed_data(b"a" * 15)  # unended, and held (a server that never ends its line)
    holder = _child()._lines(first)
    pending = asyncio.ensure_future(anext(holder))
    await asyncio.sleep(0)  # the first child's line is read and held (no time passes)
    assert stdio_child._Unended.total == 15
    second.feed_data(b"b" * 10)  # takes all past the bound: the longest (the first) goes
    reading = asyncio.ensure_future(_lines(second, _child()))
    await asyncio.sleep(0)  # (no time passes: the reader takes what was fed so far)
    assert stdio_child._Unended.total == 10
    second.feed_data(b'b\n{"ok":2}\n')
    second.feed_eof()
    assert await reading == [b"b" * 11 + b"\n", b'{"ok":2}\n']
    first.feed_data(b'aaa\n{"ok":1}\n')  # the first's line is dropped to its end
    assert await pending == b'{"ok":1}\n'
    await holder.aclose()
    assert stdio_child._Unended.total == 0
    assert not stdio_child._Unended.lines


async def test_a_childs_pipes_are_closed_though_a_helper_it_started_holds_them(
    tmp_path: object,
) -> None:
    """A process the child started in a session of its own (``setsid``, out of reach of
    ``kill_group``) holds the other ends of its pipes: the gateway kept its own ends open
    as long as that helper lived, two descriptors for every session (red-team wave 37)."""
    import os
    import signal
    from pathlib import Path

    from gateway.children import close_pipes

    pidfile = Path(str(tmp_path)) / "helper.pid"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & exit 0"
    before = len(os.listdir("/proc/self/fd"))
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await proc.wait()
        close_pipes(proc)
        await asyncio.sleep(0)  # the transport closes its pipes on the loop's next turn
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)  # the helper writing its pid, not time passing
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_a_long_line_with_a_method_is_dropped_unbuilt_and_answers_still_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A notice or a request of the child's past ``MAX_NOTICE_LINE`` goes to no client (an
    inbox holds no more): skimmed, dropped, never built. An unasked line of 60 MiB of
    numbers was read value by value on the loop every caller shares (red-team wave 51). An
    answer that long is its request's, and is read."""
    monkeypatch.setattr(stdio_child, "MAX_NOTICE_LINE", 200)
    monkeypatch.setattr(stdio_child, "MAX_UNSKIMMED_LINE", 200)
    data = ",".join(["0"] * 100)
    notice = b'{"params":{"data":[%s]},"jsonrpc":"2.0","method":"notifications/message"}'
    asks = b'{"jsonrpc":"2.0","id":"q","params":{"d":[%s]},"method":"sampling/createMessage"}'
    answer = b'{"jsonrpc":"2.0","id":1,"result":{"data":[%s]}}'
    small = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}'
    got: list[dict[str, object]] = []

    async def collect(message: dict[str, object], _raw: bytes) -> None:
        got.append(message)

    async def lines() -> AsyncIterator[bytes]:
        for line in (notice % data.encode(), asks % data.encode(), answer % data.encode(), small):
            yield line + b"\n"

    child = Child(ServerConfig("st", command="true"), "st", collect)
    await child._read_lines(lines())
    assert [m.get("id", m.get("method")) for m in got] == [1, "notifications/message"]
    assert got[0]["result"] == {"data": [0] * 100}


async def _read_awaiting(
    lines_in: list[bytes], awaited: tuple[object, ...]
) -> tuple[list[dict[str, object]], list[object]]:
    """A child's reader over ``lines_in``: the messages it built, and the ids it asked
    about (the requests awaiting ``awaited``)."""
    got: list[dict[str, object]] = []
    asked: list[object] = []

    async def collect(message: dict[str, object], _raw: bytes) -> None:
        got.append(message)

    def awaits(msg_id: object) -> bool:
        asked.append(msg_id)
        return msg_id in awaited

    async def lines() -> AsyncIterator[bytes]:
        for line in lines_in:
            yield line + b"\n"

    child = Child(ServerConfig("st", command="true"), "st", collect, awaits)
    await child._read_lines(lines())
    return got, asked


@pytest.mark.parametrize("notice_limit", [200, 1_000_000])
async def test_a_long_line_answering_no_request_is_dropped_unbuilt(
    monkeypatch: pytest.MonkeyPatch, notice_limit: int
) -> None:
    """A long line with no method that answers nothing awaited (no id, an id no request has,
    no result or error at all) was built whole only to be dropped: 60 MiB of floats held the
    loop 1.5 s and the gateway 1.4 GiB (red-team wave 53), and below the notices' limit,
    eight children's stray lines of 999,000 bytes slowed every other call 90 times (wave 57).
    Built: only an awaited answer, however its keys are spelled; and a notice below the
    notices' limit."""
    monkeypatch.setattr(stdio_child, "MAX_NOTICE_LINE", notice_limit)
    monkeypatch.setattr(stdio_child, "MAX_UNSKIMMED_LINE", 200)
    data = ",".join(["1.5"] * 100).encode()
    lines_in = [
        b'{"jsonrpc":"2.0","x":[%s]}' % data,  # nothing at all
        b'{"jsonrpc":"2.0","id":7,"result":{"x":[%s]}}' % data,  # an id no request has
        b'{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m","data":[%s]}}' % data,
        b'{"jsonrpc":"2.0","id":[1],"result":{"x":[%s]}}' % data,  # no id could be this
        b'{"jsonrpc":"2.0","id":1,"res\\u0075lt":{"x":[%s]}}' % data,  # awaited: built
        b'{"jsonrpc":"2.0","id":"s","result":{"x":[%s]}}' % data,  # awaited: built
        b'{"jsonrpc":"2.0","method":"notifications/message","params":{"d":[%s]}}' % data,
    ]
    got, asked = await _read_awaiting(lines_in, (1, "s"))
    notices = [] if notice_limit == 200 else ["notifications/message"]
    assert [m.get("id", m.get("method")) for m in got] == [1, "s", *notices]
    assert got[0]["result"] == {"x": [1.5] * 100}
    assert asked == [7, None, [1], 1, "s"]  # each id asked about, none built to be


async def test_a_long_line_msgspec_cannot_read_is_told_by_what_it_would_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stray long line that msgspec's quick read refuses (one ``NaN``, a lone surrogate's
    escape, bytes after the message) was built whole, as if the quick read could not tell:
    40 MiB lines ending in ``NaN`` cost the gateway 400 MB and other callers a second each
    (red-team wave 58). Such tokens are read as null for the quick read only: a stray line
    is dropped unbuilt, an awaited answer is still built (Python's parser reads ``NaN``), and
    a line no parser reads is dropped."""
    monkeypatch.setattr(stdio_child, "MAX_UNSKIMMED_LINE", 200)
    data = ",".join(["1.5"] * 100).encode()
    lines_in = [
        b'{"jsonrpc":"2.0","id":7,"result":{"x":[%s,NaN]}}' % data,  # an id no request has
        b'{"jsonrpc":"2.0","id":8,"result":{"x":[%s,-Infinity]}}' % data,
        b'{"jsonrpc":"2.0","id":9,"result":{"x":[%s],"t":"\\ud800"}}' % data,
        b'{"jsonrpc":"2.0","id":1,"result":{"x":[%s]}} trailing' % data,  # no parser reads it
        b'{"jsonrpc":"2.0","id":2,"result":{"x":[%s,NaN],"t":"\\\\ud800"}}' % data,  # awaited
        b'{"jsonrpc":"2.0","method":"notifications/message","params":{"d":[%s,NaN]}}' % data,
    ]
    got, asked = await _read_awaiting(lines_in, (1, 2))
    assert [m.get("id", m.get("method")) for m in got] == [2, "notifications/message"]
    assert asked == [7, 8, 9, 2]  # the trailing bytes: no message, so no id asked about
    result = got[0]["result"]
    assert isinstance(result, dict) and result["t"] == "\\ud800" and len(result["x"]) == 101
