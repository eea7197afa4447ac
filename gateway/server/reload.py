"""Hot reload: rule files (and the pins file) are watched, and SIGHUP reloads at once.

A new policy that fails to load is refused, whatever the failure: the old one keeps serving
and the failure is logged (``policy.reload_failed``, with every problem's file:line). Only a
complete, stable set of files is applied: the files are stat'ed (mtime and size) before and
after they are read, and read again until the two agree, so a file being written while it is
read never becomes the policy. A call in flight finishes under the revision it started with,
because the relay reads ``gateway.policy`` once per call.

The files are read and compiled on a worker thread (about a millisecond a CEL rule: a
thousand rules would otherwise stop every call for a second), one reload at a time; the new
policy is swapped in on the event loop.

The watcher is one step (``Reloader.watch_once``) that ``gateway.server.lifecycle`` runs under its
supervisor, so an error in it is logged and retried and never reaches other components.
"""

from __future__ import annotations

import asyncio
import signal
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio

from gateway.errors import ConfigError
from gateway.inventory.pins import Pins
from gateway.pipeline.gateway import Gateway
from gateway.policy import CompiledPolicy, load_policy, rule_files
from gateway.policy.servers import check_servers
from gateway.telemetry.audit import log

WATCH_SECONDS = 1.0
SETTLE_SECONDS = 0.25
#: Reads of a file set that keeps changing before the reload gives up (and is retried on the
#: next change).
READ_ATTEMPTS = 5

Snapshot = dict[str, tuple[int, int, int, int]]


def _snapshot(paths: list[Path]) -> Snapshot:
    """What tells each rule file's version now, by path (the file set itself counts too):
    its mtime, size, inode and ctime. ``cp -p``, ``rsync -a`` or an unpacked archive keep
    the source's mtime, and a new version may have the old size; the inode of a file renamed
    into place, and the ctime of one written, change whatever the tools set. A file that
    cannot be read (a dangling link) is listed too, so it is noticed."""
    out: Snapshot = {}
    for path, _ in rule_files(paths):
        try:
            st = path.stat()
        except OSError:
            out[str(path)] = (-1, -1, -1, -1)
            continue
        out[str(path)] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    return out


class _Unsettled(Exception):
    """The files changed during every read."""


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """How an unexpected exception is logged: its type, message and traceback."""
    return {
        "error_type": type(exc).__name__,
        "error": str(exc),
        "exception": "".join(traceback.format_exception(exc)),
    }


class Reloader:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.paths = list(gateway.config.policy)
        pins = gateway.config.pins.file
        self.pin_paths = [pins] if pins is not None else []
        self.seen = _snapshot(self.paths + self.pin_paths)
        # The last reload's outcome, for the admin API and the console (None: none yet).
        self.last: dict[str, Any] | None = None
        self._one_at_a_time = anyio.Lock()
        # SIGHUP's reloads in progress (the loop keeps only weak references to tasks).
        self._signalled: set[asyncio.Task[bool]] = set()

    def on_signal(self) -> None:
        """SIGHUP: reload in a task of its own (a signal handler cannot wait)."""
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    def _result(
        self, why: str, ok: bool, revision: str, problems: list[str], told: list[str] | None = None
    ) -> None:
        self.last = {
            "ok": ok,
            "why": why,
            "at": time.time(),
            "revision": revision,
            "problems": problems,
            # loaded, but said: an entry naming a server this gateway does not serve
            "warnings": told or [],
        }

    def load_stable(self) -> CompiledPolicy:
        """Load the rule files; read again while they change under the read."""
        before = _snapshot(self.paths)
        for _ in range(READ_ATTEMPTS):
            try:
                result: CompiledPolicy | Exception = load_policy(self.paths, self.gw.policy.engine)
            except Exception as exc:  # judged only once the read is known to be whole
                result = exc
            after = _snapshot(self.paths)
            if after == before:
                if isinstance(result, Exception):
                    raise result
                return result
            before = after
        raise _Unsettled(f"the rule files changed during each of {READ_ATTEMPTS} reads")

    async def reload(self, why: str) -> bool:
        """Load the rule files again (on a worker thread, one reload at a time); swap the
        policy only if all of it loads."""
        async with self._one_at_a_time:
            return await self._reload(why)

    async def _reload(self, why: str) -> bool:
        # The pins file first, and whatever the rules do: a rollback of it to the reviewed
        # pins was ignored while a rule file failed to load (and not tried again until some
        # file changed), and the unreviewed definition kept running (red-team wave 42).
        await self._reload_pins_or_keep(why)
        old = self.gw.policy.revision
        try:
            policy = await anyio.to_thread.run_sync(self.load_stable)
            told = [str(p) for p in check_servers(policy, self.gw.config.servers)]
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            log.error("policy.reload_failed", why=why, revision=old, problems=problems)
            self._result(why, False, old, problems)
            return False
        except Exception as exc:
            log.error("policy.reload_failed", why=why, revision=old, **exception_fields(exc))
            self._result(why, False, old, [f"{type(exc).__name__}: {exc}"])
            return False
        self.gw.policy = policy
        self._result(why, True, policy.revision, [], told)
        self.gw.extras["policy_warnings"] = told  # of the policy in force, from now on
        for problem in told:
            log.warning("policy.warning", why=why, problem=problem)
        if self.gw.metrics is not None:
            self.gw.metrics.set_policy(policy.revision)
        log.info("policy.reloaded", why=why, old_revision=old, revision=policy.revision)
        return True

    async def _reload_pins_or_keep(self, why: str) -> None:
        try:
            await self._reload_pins()
        except ConfigError as exc:  # the pins held keep serving
            log.error("pins.reload_failed", why=why, problems=[str(p) for p in exc.problems])
        except Exception as exc:
            log.error("pins.reload_failed", why=why, **exception_fields(exc))

    async def _reload_pins(self) -> None:
        config = self.gw.config
        file = config.pins.file
        if file is None:
            return
        fresh = await anyio.to_thread.run_sync(Pins.load, file, config.pins.accept_changes)
        self.gw.pins.repinned(fresh)

    def changed(self) -> bool:
        now = _snapshot(self.paths + self.pin_paths)
        if now == self.seen:
            return False
        self.seen = now
        return True

    async def watch_once(self) -> None:
        """One look at the files; after a change, let them settle and reload."""
        await anyio.sleep(WATCH_SECONDS)
        if not self.changed():
            return
        # A file caught mid-write (truncated, half written) must not load as a policy:
        # wait until the files have stopped changing, then read them.
        settled = False
        while not settled:
            await anyio.sleep(SETTLE_SECONDS)
            settled = not self.changed()
        await self.reload("files changed")


@asynccontextmanager
async def reloading(gateway: Gateway) -> AsyncIterator[Reloader]:
    """SIGHUP reloads for the life of the block; the watcher is the caller's to run."""
    reloader = Reloader(gateway)
    gateway.extras["reloader"] = reloader
    loop = asyncio.get_running_loop()
    installed = False
    with suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)
        installed = True
    try:
        yield reloader
    finally:
        if installed:
            with suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
