"""Hot reload: rule files (and the pins file) are watched, and SIGHUP reloads at once.

A new policy that fails to load is refused: the old one keeps serving and every problem is
logged with its file:line. A call in flight finishes under the revision it started with,
because the relay reads ``gateway.policy`` once per call.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio

from gateway.audit import log
from gateway.errors import ConfigError
from gateway.pins import Pins
from gateway.policy import load_policy, rule_files
from gateway.runtime import Gateway

WATCH_SECONDS = 1.0
SETTLE_SECONDS = 0.25


def _snapshot(paths: list[Path]) -> dict[str, float]:
    files = [p for p, _ in rule_files(paths)]
    out: dict[str, float] = {}
    for path in files:
        with suppress(OSError):
            out[str(path)] = path.stat().st_mtime_ns
    return out


class Reloader:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.paths = list(gateway.config.policy_paths)
        pins = gateway.config.pins_file
        self.pin_paths = [pins] if pins is not None else []
        self.seen = _snapshot(self.paths + self.pin_paths)

    def reload(self, why: str) -> bool:
        """Load the rule files again; swap the policy only if all of it loads."""
        old = self.gw.policy.revision
        try:
            policy = load_policy(self.paths, self.gw.policy.engine)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            log.error("policy.reload_failed", why=why, revision=old, problems=problems)
            return False
        self.gw.policy = policy
        self._reload_pins()
        if self.gw.metrics is not None:
            self.gw.metrics.set_policy(policy.revision)
        log.info("policy.reloaded", why=why, old_revision=old, revision=policy.revision)
        return True

    def _reload_pins(self) -> None:
        config = self.gw.config
        if config.pins_file is None:
            return
        fresh = Pins.load(config.pins_file, config.accept_tool_changes)
        self.gw.pins.pinned.update(fresh.pinned)
        # A re-pinned tool is trusted again; it is re-checked on the next listing.
        for key, digest in fresh.pinned.items():
            change = self.gw.pins.changed.get(key)
            if change is not None and change.seen == digest:
                del self.gw.pins.changed[key]

    def changed(self) -> bool:
        now = _snapshot(self.paths + self.pin_paths)
        if now == self.seen:
            return False
        self.seen = now
        return True

    async def watch(self) -> None:
        while True:
            await anyio.sleep(WATCH_SECONDS)
            if not self.changed():
                continue
            # A file caught mid-write (truncated, half written) must not load as a policy:
            # wait until the files have stopped changing, then read them.
            settled = False
            while not settled:
                await anyio.sleep(SETTLE_SECONDS)
                settled = not self.changed()
            self.reload("files changed")


@asynccontextmanager
async def reloading(gateway: Gateway) -> AsyncIterator[Reloader]:
    """Watch files and listen for SIGHUP for the life of the block."""
    reloader = Reloader(gateway)
    gateway.extras["reloader"] = reloader
    async with anyio.create_task_group() as tg:
        tg.start_soon(reloader.watch)
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
        try:
            yield reloader
        finally:
            tg.cancel_scope.cancel()
