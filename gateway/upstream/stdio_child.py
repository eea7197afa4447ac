"""A supervised stdio MCP server process: JSON lines in and out, restarted with backoff.

Children run in their own process group and get SIGTERM when the gateway dies
(``PR_SET_PDEATHSIG``); a restart streak is logged when it begins, when its cause changes and
when it ends, never once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import anyio
import structlog
from mcp.client.stdio import get_default_environment

from gateway.children import KILL_GRACE, READ_CHUNK, close_pipes, die_with_parent, kill_group
from gateway.config import ServerConfig
from gateway.printable import printable
from gateway.telemetry.childlog import LogBudget, StderrLog
from gateway.turns import Turns
from gateway.wire.jsonrpc import loads_line
from gateway.wire.sse import MAX_NOTICE_BYTES, MAX_UNSKIMMED_LINE, wanted_line

log = structlog.get_logger("celgate.stdio")

LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; images make long lines
#: What the unended lines of every child may hold at once: sixteen children each holding
#: a line of 60 MiB that never ended pinned 1.2 GiB. Past it (or past ``LINE_LIMIT``), the
#: line that grows is dropped, up to its end, and the child read on.
MAX_ALL_PENDING_LINES = 128 * 1024 * 1024


#: A message of the child's that answers no request (a notice, a request of its own) and is
#: longer than this goes to no client (``sse.MAX_NOTICE_BYTES``: a stream of the Python SDK's
#: client ends on it): it is dropped once its members are skimmed, never built (a line of 60
#: MiB of numbers, unasked, was read value by value on the loop every caller shares:
#: red-team wave 51).
MAX_NOTICE_LINE = MAX_NOTICE_BYTES


class _Unended:
    """One child's line not yet ended; the class, what every child's hold right now (one
    event loop: no lock). Past ``MAX_ALL_PENDING_LINES`` the longest is dropped, whoever's:
    the line that grew was, and one server's 64 MiB lines that never ended made every other
    stdio server's answers over one read (64 KiB) dropped (red-team wave 62)."""

    total = 0
    lines: ClassVar[set[_Unended]] = set()

    def __init__(self, label: str) -> None:
        self.label = label
        self.pending = bytearray()
        self.dropping = False  # to the line's end

    def add(self, data: bytes) -> None:
        self.pending += data
        _Unended.total += len(data)

    def clear(self) -> None:
        _Unended.total -= len(self.pending)
        self.pending.clear()

    def drop(self) -> None:
        log.error(
            "stdio.line_dropped",
            server=self.label,
            held=len(self.pending),
            all_held=_Unended.total,
        )
        self.clear()
        self.dropping = True

    @classmethod
    def over(cls) -> None:
        """Past the budget: the longest lines are dropped until it holds."""
        while cls.total > MAX_ALL_PENDING_LINES and cls.lines:
            max(cls.lines, key=lambda line: len(line.pending)).drop()


BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 0.2, 10.0, 30.0
EXIT_DRAIN = 1.0  # what a child's stdout still holds once it has exited is read this long
#: Input a child has not read yet, at most (past it, messages are refused), and how long one
#: write waits for the pipe to drain: a child that stops reading must not grow the gateway,
#: nor hold the tasks that write to it.
MAX_UNWRITTEN = 8 * 1024 * 1024
SEND_SECONDS = 5.0
STARTUP_GRACE = 30.0  # a cold start (imports) is not a request's silence; this long at most
# A message from the child, and its line as read (passed on as is where nothing changes).
OnMessage = Callable[[dict[str, Any], bytes], Awaitable[None]]


class Child:
    """One supervised stdio process: JSON lines in and out, restarted with backoff."""

    def __init__(
        self,
        config: ServerConfig,
        label: str,
        on_message: OnMessage,
        awaits: Callable[[Any], bool] = lambda _id: True,
    ) -> None:
        self.config = config
        self.label = label
        self.on_message = on_message
        #: Whether an answer with this id would be taken: a long line answering none is
        #: dropped unbuilt.
        self.awaits = awaits
        self.on_exit: Callable[[], Awaitable[None]] | None = None
        self.on_start: Callable[[], Awaitable[None]] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_task: asyncio.Task[None] | None = None
        # Lines of its stdout that are no message of ours are logged like its stderr: a few a
        # second, then a count (a child printing junk in a loop cannot flood the log).
        self.junk = LogBudget("stdio.junk_dropped", {"server": label})
        self.ready = anyio.Event()
        self.stopping = False
        self.restarts = 0
        # Supervision state: failed starts or exits in a row, the last one's cause, and when
        # the current process started. A streak is logged when it begins, when its cause
        # changes and when it ends (``stdio.recovered``), never once per attempt.
        self.failures = 0
        self.last_error: str | None = None
        self.started_at = 0.0
        # Silence counts against a request from here on: the child's first word since its
        # start, or STARTUP_GRACE after the start if it has said nothing yet.
        self.warm_at = 0.0

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self.config.command is not None
        env = {**get_default_environment(), **self.config.env}
        return await asyncio.create_subprocess_exec(
            self.config.command,
            *self.config.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=self.config.cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
            limit=READ_CHUNK,  # read in chunks (``_lines``): no line is held by the stream
        )

    async def run(self) -> None:
        """Start the process and keep it running until ``stop``; never raises for a crash."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            started = self.started_at = time.monotonic()
            self.warm_at = started + STARTUP_GRACE
            try:
                self.proc = await self._spawn()
            except OSError as exc:
                error = spawn_error(exc, self.config.command)
                self._failed("stdio.spawn_failed", error, started)
            else:
                level = log.debug if self.failures else log.info
                level("stdio.started", server=self.label, pid=self.proc.pid)
                assert self.proc.stderr is not None
                drain = StderrLog(self.config.name, self.label).drain(self.proc.stderr)
                self.stderr_task = asyncio.create_task(drain)
                if self.on_start is not None:
                    await self.on_start()
                self.ready.set()
                await self._read_while_alive(self.proc)
                self.ready = anyio.Event()
                code = await self._reap(self.proc)
                await self._end_stderr()
                close_pipes(self.proc)
                if self.on_exit is not None:
                    await self.on_exit()
                if self.stopping:
                    return
                self._failed("stdio.exited", f"exited with code {code}", started, code=code)
            if time.monotonic() - started > HEALTHY_AFTER:
                delay = BACKOFF_FIRST
            if self.failures == 1:
                log.info("stdio.restarting", server=self.label, backoff=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            self.restarts += 1

    def _failed(self, event: str, error: str, started: float, **fields: Any) -> None:
        """One more failed start or exit; logged when a streak begins or its cause changes."""
        if self.failures and time.monotonic() - started > HEALTHY_AFTER:
            self._recovered()  # it ran well for a while: this is a new streak
        self.failures += 1
        if self.failures == 1 or error != self.last_error:
            log.error(
                event,
                server=self.label,
                command=self.config.command,
                error=error,
                failures=self.failures,
                **fields,
            )
        self.last_error = error

    def _recovered(self) -> None:
        if self.failures:
            log.info("stdio.recovered", server=self.label, failures=self.failures)
        self.failures, self.last_error = 0, None

    def health(self) -> tuple[bool, str | None]:
        """Up while a process runs and is not in a streak of failures (one that has run well
        for ``HEALTHY_AFTER`` seconds ends its streak); else down, with the last cause."""
        proc = self.proc
        running = proc is not None and proc.returncode is None and self.ready.is_set()
        if running and self.failures and time.monotonic() - self.started_at > HEALTHY_AFTER:
            self._recovered()
        if running and not self.failures:
            return True, None
        return False, self.last_error or "not started yet"

    async def _read_while_alive(self, proc: asyncio.subprocess.Process) -> None:
        """Read the child's messages until its stdout ends or the child exits. A process it
        started (a helper sharing its stdout) would keep the pipe open after it exits, and the
        server would never be seen to stop, nor be restarted: once the child is gone its whole
        group is killed, and what the pipe still holds is read for a second at most."""
        reader = asyncio.create_task(self._read(proc))
        exited = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                kill_group(proc)
                await asyncio.wait({reader}, timeout=EXIT_DRAIN)
        finally:
            for task in (reader, exited):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _lines(self, stdout: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
        """The child's lines, each with its newline; one past ``LINE_LIMIT``, or the longest
        held while all unended lines hold ``MAX_ALL_PENDING_LINES``, is dropped to its end."""
        line = _Unended(self.label)
        _Unended.lines.add(line)
        try:
            while chunk := await stdout.read(READ_CHUNK):
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    if len(line.pending) + end + 1 - start > LINE_LIMIT and not line.dropping:
                        log.error("stdio.line_dropped", server=self.label, held=len(line.pending))
                        line.dropping = True
                    if not line.dropping:
                        yield (
                            bytes(line.pending + chunk[start : end + 1])
                            if line.pending
                            else chunk[start : end + 1]
                        )
                    line.clear()
                    line.dropping = False
                    start = end + 1
                rest = chunk[start:]
                if rest and not line.dropping:
                    line.add(rest)
                    if len(line.pending) > LINE_LIMIT:
                        line.drop()
                    else:
                        _Unended.over()
            if line.pending:  # the last line, unended when the child closed its stdout
                yield bytes(line.pending)
        finally:
            line.clear()
            _Unended.lines.discard(line)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        lines = self._lines(proc.stdout)
        try:
            await self._read_lines(lines)
        finally:
            await lines.aclose()

    async def _read_lines(self, lines: AsyncIterator[bytes]) -> None:
        # A child flooding its stdout (blank lines at 64 KiB/s) kept the loop in this reader,
        # every line there already: every other caller's calls took 20 s (red-team wave 37).
        turns = Turns()
        while True:
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                return
            except OSError as exc:  # a broken pipe
                log.error("stdio.read_failed", server=self.label, error=str(exc))
                return
            await turns.after_chunk()
            self.warm_at = min(self.warm_at, time.monotonic())
            if self.failures:
                self._recovered()  # it speaks: the streak is over
            if line.isspace():  # a blank line: nothing to parse, nothing to say
                continue
            if len(line) > MAX_UNSKIMMED_LINE and not wanted_line(
                line, self.awaits, MAX_NOTICE_LINE
            ):
                if self.junk.allow():  # a notice, a request, an answer no one awaits: unbuilt
                    log.warning("stdio.message_too_large", server=self.label, size=len(line))
                continue
            try:
                message = loads_line(line)
            except ValueError:
                if self.junk.allow():
                    text = printable(line[:200].decode(errors="replace"))
                    log.warning("stdio.not_json", server=self.label, line=text)
                continue
            if not isinstance(message, dict):
                continue
            try:
                await self.on_message(message, line.rstrip(b"\r\n"))
            except Exception as exc:  # one bad message is dropped; the reader goes on
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("stdio.message_failed", server=self.label, error=error)

    async def reap(self) -> None:
        """Once stopped: wait for the process to exit (SIGKILL after ``KILL_GRACE``), even
        when its supervisor was cancelled before it could (the gateway is stopping)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            await self._reap(proc)
        await self._end_stderr()
        if proc is not None:
            close_pipes(proc)

    async def _end_stderr(self) -> None:
        """Once the process is gone: log what its stderr still holds, for a second at most
        (a grandchild may hold the pipe open), then stop reading it."""
        task, self.stderr_task = self.stderr_task, None
        if task is None:
            return
        with anyio.CancelScope(shield=True):
            await asyncio.wait({task}, timeout=1.0)
        task.cancel()

    async def _reap(self, proc: asyncio.subprocess.Process) -> int | None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(KILL_GRACE):
                await proc.wait()
            if proc.returncode is None:
                kill_group(proc)
            await proc.wait()
        return proc.returncode

    async def send(self, message: dict[str, Any]) -> bool:
        """Write one message, one line: ASCII JSON, so nothing in it reads as a line break to
        any reader (a raw U+2028, U+2029 or U+0085 does to Python's ``str.splitlines``);
        False when there is no live process to take it."""
        data = json.dumps(message, separators=(",", ":")).encode()
        return await self.send_line(data)

    async def send_line(self, data: bytes) -> bool:
        """Write one message already in JSON (with no newline in it); False when there is no
        live process to take it, or when the child has stopped reading (its unread input is
        past ``MAX_UNWRITTEN``: a child busy in a slow tool reads nothing meanwhile). A write
        waits at most ``SEND_SECONDS`` for the pipe to drain; the message stays queued."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        data += b"\n"
        try:
            unwritten = proc.stdin.transport.get_write_buffer_size()
            if unwritten and unwritten + len(data) > MAX_UNWRITTEN:  # one message always goes
                log.warning("stdio.child_not_reading", server=self.config.name, child=self.label)
                return False
            proc.stdin.write(data)
            with anyio.move_on_after(SEND_SECONDS):
                await proc.stdin.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def wait_ready(self, within: float) -> bool:
        with anyio.move_on_after(within):
            await self.ready.wait()
            return True
        return False

    def restart(self) -> None:
        """End the running process (its group, at once); ``run`` starts it again, as after a
        crash, and its exit answers what it had in flight."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            kill_group(proc)

    def stop(self) -> None:
        """Close stdin (a polite stdio server exits on EOF), then SIGTERM the group."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is not None:  # gone, but not what it started (its group)
            kill_group(proc)
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        # Killed after KILL_GRACE if it is still there: a session ended (DELETE, give-way,
        # idle) waited for its child to exit, and one that outlived SIGTERM and its stdin's
        # end lived on, out of every cap (red-team wave 42).
        with contextlib.suppress(RuntimeError):  # (no loop: the process is ending anyway)
            asyncio.get_running_loop().call_later(KILL_GRACE, _kill_if_running, proc)


def _kill_if_running(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:  # not yet reaped: its pid is still its own
        kill_group(proc)


def spawn_error(exc: OSError, command: str | None) -> str:
    """A start failure as an operator reads it: "No such file or directory: 'cmd'" (an exec
    that fails in the forked child reports no file name: the command is the one)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    filename = exc.filename or command
    return f"{text}: {filename!r}" if filename else text
