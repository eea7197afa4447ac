"""What one handshake-era stdio session keeps is bounded by what it is, not by what its client
sends: its initialize and notifications/initialized once each (a client sending either again
and again, 1 MiB each, grew the gateway a MiB a message), and a progress token only while
its request is in progress (a request id used again left the earlier one's token and deadline
behind, each token as long as the client liked)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import load_config
from gateway.upstream.stdio import StdioBridge
from gateway.upstream.stdio_session import MAX_ASKING, SessionLink
from gateway.upstream.stdio_wire import Inbox
from gateway.wire.jsonrpc import MAX_TOKEN_CHARS, BadMessage, classify
from tests.gateway_proc import write_config
from tests.peers import stdio_upstream_command


@pytest.fixture
def link(tmp_path: Path) -> SessionLink:
    command, args = stdio_upstream_command()
    servers = {"st": {"command": command, "args": args}}
    config = load_config(write_config(tmp_path, "default: deny\n", servers, 9))
    link = SessionLink(SimpleNamespace(config=config.servers["st"]), "s" * 16, "g")  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> bool:  # the child, not started: what it gets
        sent.append(message)
        return True

    link.child.ready.set()
    link.child.send = send  # type: ignore[method-assign]
    return link


def _message(method: str, msg_id: Any = None, **meta: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {"_meta": meta}}
    if msg_id is not None:
        message["id"] = msg_id
    return message


async def test_the_handshake_is_kept_once(link: SessionLink) -> None:
    link.handshake["initialize"] = _message("initialize", 1)
    for n in range(50):
        await link._notify(_message("notifications/initialized", pad=n), None)
    assert list(link.handshake) == ["initialize", "notifications/initialized"]
    assert link.handshake["notifications/initialized"]["params"]["_meta"] == {"pad": 49}


async def test_an_id_used_again_leaves_nothing_of_the_earlier_request(link: SessionLink) -> None:
    for n in range(50):
        link._begin(1, _message("tools/call", 1, progressToken=f"token-{n}"))
    assert link.tokens == {"token-49": 1}
    assert list(link.in_flight) == [1]


async def test_a_question_asked_of_nobody_stops_no_clock(link: SessionLink) -> None:
    """A child asking ``roots/list`` right after ``notifications/initialized`` (as
    server-filesystem does), with no stream open, was kept as "being asked" for good, and
    every deadline of the session stopped: a call the child never answered hung for ever
    (red-team wave 42)."""
    await link._from_child(_message("roots/list", "srv-1"), b"")  # no call, no GET stream
    assert link.asking == {}
    link._begin(1, _message("tools/call", 1))
    assert link._last_sign(1)() < time.monotonic()  # its clock runs


async def test_a_question_stops_only_the_clock_of_the_request_it_came_on(
    link: SessionLink,
) -> None:
    link._begin(1, _message("tools/call", 1, progressToken="t1"))
    link._begin(2, _message("tools/call", 2, progressToken="t2"))
    asked = _message("sampling/createMessage", "srv-2", progressToken="t1")
    await link._from_child(asked, b"")
    assert link.asking["srv-2"][0] == 1
    now = time.monotonic()
    assert link._last_sign(1)() >= now  # asked on 1's stream: its clock stands still
    assert link._last_sign(2)() < now  # 2's runs
    await link._notify({"jsonrpc": "2.0", "id": "srv-2", "result": {}}, None)
    assert link.asking == {} and link._last_sign(1)() < now


async def test_what_is_kept_of_the_questions_is_bounded(link: SessionLink) -> None:
    """300 questions with 1 MiB ids, never answered, were 300 MiB held for the session's
    life (red-team wave 42): ids past ID_CHARS are not kept, nor questions past MAX_ASKING."""
    link.get_stream = Inbox()
    for n in range(300):
        await link._from_child(_message("sampling/createMessage", "x" * (1 << 20) + str(n)), b"")
    assert link.asking == {}
    for n in range(300):
        await link._from_child(_message("sampling/createMessage", f"q-{n}"), b"")
    assert len(link.asking) == MAX_ASKING


@pytest.mark.parametrize("where", ["meta", "progress", "cancelled"])
def test_a_token_past_its_length_is_refused(where: str) -> None:
    token = "t" * (MAX_TOKEN_CHARS + 1)
    if where == "meta":
        message = _message("tools/call", 1, progressToken=token)
        message["params"]["name"] = "x"
    elif where == "progress":
        message = {"jsonrpc": "2.0", "method": "notifications/progress"}
        message["params"] = {"progressToken": token, "progress": 1}
    else:
        message = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
        message["params"] = {"requestId": token}
    with pytest.raises(BadMessage, match="at most 1024"):
        classify(message)
    short = token[:MAX_TOKEN_CHARS]
    classify(
        _message("tools/call", 1, progressToken=short)
        | {"params": {"name": "x", "_meta": {"progressToken": short}}}
    )


@pytest.mark.parametrize(
    "method", ["notifications/roots/list_changed", "notifications/progress", "notifications/x"]
)
async def test_no_callers_notice_reaches_the_process_every_caller_shares(
    tmp_path: Path, method: str
) -> None:
    """One 2026-07-28 process serves every caller: one caller's notice (roots changed, a
    progress notice naming the gateway's own guessable ids) spoke to it for all of them."""
    from gateway.upstream.stdio_shared import SharedLink

    command, args = stdio_upstream_command()
    servers = {"st": {"command": command, "args": args}}
    config = load_config(write_config(tmp_path, "default: deny\n", servers, 9))
    shared = SharedLink(config.servers["st"])
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> bool:
        sent.append(message)
        return True

    shared.child.send = send  # type: ignore[method-assign]
    params = {"progressToken": "c1", "progress": 1} if method.endswith("progress") else {}
    await shared._notify({"jsonrpc": "2.0", "method": method, "params": params})
    assert sent == []


def test_an_id_past_its_length_is_refused() -> None:
    """A request is kept by its id while in progress (and past its client, until the server
    answers): 300 abandoned calls with ids of 1 MiB held 300 MiB."""
    long_id = "i" * (MAX_TOKEN_CHARS + 1)
    with pytest.raises(BadMessage, match="id longer than 1024"):
        classify({"jsonrpc": "2.0", "id": long_id, "method": "ping"})
    assert classify({"jsonrpc": "2.0", "id": long_id[:-1], "method": "ping"}).msg_id


async def test_a_session_in_use_at_the_gateway_never_gives_way(tmp_path: Path) -> None:
    """At ``max_processes_per_grant`` the caller's least recently used idle session gives
    way to its new one. A session whose call was held for approval (not yet at the
    process) or whose client kept its GET stream open read as idle and was ended: the
    approved call then ran nothing, and neither SDK opens another session (red-team wave
    39). Now the relay marks its session in use for as long as it holds the request."""
    command, args = stdio_upstream_command()
    servers = {"st": {"command": command, "args": args, "max_processes_per_grant": 2}}
    config = load_config(write_config(tmp_path, "default: deny\n", servers, 9))
    bridge = StdioBridge(config.servers["st"])
    held, streaming, idle = (SessionLink(bridge, sid * 16, "g") for sid in "hsi")
    for link in (held, idle):
        link.last_used = 0.0  # long idle by the clock
        bridge.sessions[link.session_id] = link
    idle.reaped.set()  # (its process, never started here, is gone at once)
    with bridge.in_use("g", held.session_id), bridge.in_use("other", idle.session_id):
        assert await bridge._refusal("g") is None  # room made: the idle one gave way
        assert set(bridge.sessions) == {held.session_id}
        streaming.serving = 1  # its GET stream is being answered
        bridge.sessions[streaming.session_id] = streaming
        status, why = await bridge._refusal("g") or (0, "")
        assert status == 429 and "all busy" in why  # nothing else may give way
    assert held.serving == 0 and held.last_used > 0  # used just now


async def test_a_request_answered_while_it_waited_for_the_process_is_never_sent(
    link: SessionLink,
) -> None:
    """A request that came while the process was dying waited for the next one; the dying
    one's exit answered it "exited before answering", and it was sent to the next process
    anyway: it ran after its client was told it had not, and its id was free for another
    request to take its late answer (red-team wave 66)."""
    import anyio

    link.child.ready = anyio.Event()  # the process's output ended: not ready
    sent: list[dict[str, Any]] = []

    async def to_child(message: dict[str, Any]) -> bool:
        sent.append(message)
        return True

    link.child.send = to_child  # type: ignore[method-assign]
    told: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        told.append(message)

    accept = "application/json, text/event-stream"
    incoming: Any = SimpleNamespace(header=lambda name: accept if name == "accept" else None)
    posted = asyncio.ensure_future(link._post(incoming, send, _message("tools/list", 50), None))
    while 50 not in link.in_flight:  # until it waits for the process
        await asyncio.sleep(0)
    await link._child_exited()  # the dying process's requests are answered
    link.child.ready.set()  # the next process is ready
    await posted
    assert sent == []
    assert b"exited before answering" in b"".join(m.get("body", b"") for m in told)


def test_no_abandoned_id_is_forgotten_while_its_process_lives(link: SessionLink) -> None:
    """The newest 256 ids that ended without their answer were kept, the oldest forgotten:
    an agent cancelled 260 pings to push a cancelled tools/list's id out, then took that
    list's late answer, whole, as a call's result (red-team wave 68). None is forgotten;
    past the bound, the session's process is ended (and started again) instead."""
    from gateway.upstream.stdio_session import MAX_ABANDONED

    restarts: list[bool] = []
    link.child.restart = lambda: restarts.append(True)  # type: ignore[method-assign]
    link._abandon(100)
    for n in range(MAX_ABANDONED - 1):
        link._abandon(f"ping-{n}")
    assert restarts == [] and link._unanswered(100)
    link._abandon("one-more")
    assert restarts == [True] and link._unanswered(100)  # until the process's exit clears it


async def test_a_process_still_exiting_counts_against_the_caps(tmp_path: Path) -> None:
    """An ended session's process, given its grace to exit, was no one's: one agent opening
    and ending sessions in a loop ran 77 processes under max_processes 4 (red-team wave 70).
    It counts until it is reaped; a place made by giving way waits for it to exit."""
    command, args = stdio_upstream_command()
    servers = {"st": {"command": command, "args": args, "max_processes": 2}}
    config = load_config(write_config(tmp_path, "default: deny\n", servers, 9))
    bridge = StdioBridge(config.servers["st"])
    ending, busy = SessionLink(bridge, "e" * 16, "g"), SessionLink(bridge, "b" * 16, "g")
    bridge.running[ending.session_id] = ending  # ended (DELETE), its process still exiting
    bridge.sessions[busy.session_id] = busy
    busy.serving = 1
    status, why = await bridge._refusal("other") or (0, "")
    assert status == 503 and "max_processes=2" in why
    del bridge.running[ending.session_id]  # reaped
    assert await bridge._refusal("other") is None


def test_a_later_request_under_an_id_is_no_part_of_the_earlier_ones_stream(
    link: SessionLink,
) -> None:
    """Streams were kept by the id alone: once a call was answered, a tools/list under its
    id added its events to the call's stream, and resuming the call's stream replayed the
    list whole, hidden tools and all (red-team wave 72). Each request has a stream of its own."""
    call = link._begin(5, _message("tools/call", 5))
    primed = link.events.priming(call.stream).split(b"\n", 1)[0].removeprefix(b"id: ").decode()
    answer = b'{"jsonrpc":"2.0","id":5,"result":{"content":[]}}'
    link._answer(({"id": 5}, answer))  # its client away: kept for the stream's resumption
    listing = link._begin(5, _message("tools/list", 5))
    assert listing.stream != call.stream
    link.events.framed(listing.stream, b'{"jsonrpc":"2.0","id":5,"result":{"tools":[]}}')
    replayed = list(link.events.after(primed))
    assert len(replayed) == 1 and b"content" in replayed[0]  # the call's answer alone
