"""What a stdio server (or an agent) can make the gateway hold is bounded in bytes, not only in
messages: a session's replay log, the messages waiting for a reader, and the chunks of an
in-process answer. 200 events of 1 MiB kept for replay held 700 MB after the calls ended;
notifications to a caller who does not read held 2.4 GB."""

from __future__ import annotations

import gc
from typing import Any

import anyio.lowlevel

from gateway.upstream import stdio_events, stdio_wire
from gateway.upstream.inproc import AsgiPool
from gateway.upstream.stdio_events import EventLog
from gateway.upstream.stdio_wire import Inbox

MiB = 1024 * 1024


class TestReplayLog:
    def test_one_log_keeps_its_newest_events_within_its_bytes(self) -> None:
        log = EventLog(max_bytes=4 * MiB)
        frames = [log.framed("s", b"x" * MiB) for _ in range(10)]
        assert log.held <= 4 * MiB
        first_kept = frames[-3].split(b"\n", 1)[0].removeprefix(b"id: ").decode()
        assert list(log.after(first_kept)) == frames[-2:]  # the newest, in order
        assert list(log.after("1")) == []  # forgotten: nothing to replay from it
        log.clear()
        assert log.held == 0

    def test_an_event_framed_after_the_session_ended_is_not_kept(self) -> None:
        """A ``respond`` still under way when its session ended framed what was left, and
        the log kept it: its bytes counted for the process, never given back."""
        before = EventLog.held_by_all
        log = EventLog(max_bytes=4 * MiB)
        log.framed("s", b"x" * MiB)
        log.clear()
        log.framed("s", b"y" * MiB)
        assert log.held == 0 and EventLog.held_by_all == before

    def test_an_event_larger_than_a_log_is_sent_but_not_kept(self) -> None:
        log = EventLog(max_bytes=MiB)
        small = log.framed("s", b"a")
        log.framed("s", b"b" * (2 * MiB))
        assert log.held == len(small)

    def test_every_log_together_stays_within_the_process_budget(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(stdio_events, "MAX_ALL_LOG_BYTES", 6 * MiB)
        before = EventLog.held_by_all
        logs = [EventLog(max_bytes=4 * MiB) for _ in range(5)]
        for log in logs:
            for _ in range(4):
                log.framed("s", b"x" * MiB)
        assert EventLog.held_by_all - before <= 6 * MiB
        for log in logs:
            log.clear()
        assert EventLog.held_by_all == before


class TestInbox:
    def item(self, size: int) -> tuple[dict[str, Any], bytes]:
        return {"jsonrpc": "2.0", "method": "notifications/message"}, b"x" * size

    def test_notifications_past_the_bytes_are_dropped_never_the_answer(self) -> None:
        inbox = Inbox()
        for _ in range(20):
            inbox.put(self.item(MiB))
        assert inbox.held <= stdio_wire.INBOX_BYTES
        inbox.put(self.item(2 * MiB), final=True)  # the answer always goes in
        assert inbox.items[-1][1] == b"x" * (2 * MiB)

    async def test_bytes_go_back_when_taken_or_let_go(self) -> None:
        before = Inbox.held_by_all
        inbox = Inbox()
        inbox.put(self.item(MiB))
        inbox.put(self.item(MiB))
        assert Inbox.held_by_all == before + 2 * MiB
        await inbox.get()
        assert Inbox.held_by_all == before + MiB
        del inbox
        gc.collect()
        assert Inbox.held_by_all == before

    def test_every_inbox_together_stays_within_the_process_budget(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(stdio_wire, "ALL_INBOX_BYTES", 5 * MiB)
        before = Inbox.held_by_all
        inboxes = [Inbox() for _ in range(4)]
        for inbox in inboxes:
            for _ in range(4):
                inbox.put(self.item(MiB))
        assert Inbox.held_by_all - before <= 5 * MiB
        inboxes.clear()
        gc.collect()
        assert Inbox.held_by_all == before


def test_a_servers_request_is_kept_whatever_other_inboxes_hold(monkeypatch: Any) -> None:
    """One agent's unread calls filled the shared budget, and another caller's elicitation
    request was dropped: its call waited to its timeout."""
    monkeypatch.setattr(stdio_wire, "ALL_INBOX_BYTES", 2 * MiB)
    hog = Inbox()
    hog.put(({"jsonrpc": "2.0", "method": "notifications/message"}, b"x" * (2 * MiB)))
    victim = Inbox()
    victim.put(({"jsonrpc": "2.0", "method": "notifications/progress"}, b"p" * 100))
    asks = {"jsonrpc": "2.0", "id": 1, "method": "elicitation/create"}
    victim.put((asks, b"q" * 100))
    assert [item[0].get("method") for item in victim.items] == ["elicitation/create"]


async def test_an_in_process_answer_pauses_its_sender_by_bytes() -> None:
    """Ten chunks of 1 MiB, nobody reading: the app waits after about 4 MiB."""
    sent = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(10):
            await send({"type": "http.response.body", "body": b"x" * MiB, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    pool = AsgiPool(app, "bytes")
    answer = await pool.request("POST", {}, b"")
    for _ in range(50):
        await anyio.lowlevel.checkpoint()
    assert 4 <= sent <= 5
    body = await answer.read()
    assert len(body) == 10 * MiB and sent == 10
