"""Child processes the gateway starts (stdio servers, and its own readings of their tools):
each in its own process group, told to stop when the gateway dies, killed with its group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal

#: What a child's stdout is read in: no line is held by the stream itself.
READ_CHUNK = 256 * 1024
#: How long a child that was asked to stop (its stdin closed, SIGTERM) has before SIGKILL.
KILL_GRACE = 2.0


def die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def close_pipes(proc: asyncio.subprocess.Process) -> None:
    """The gateway's ends of a child's pipes, closed. A process the child started in a
    session of its own (``setsid``: out of reach of ``kill_group``) holds their other ends,
    and the gateway kept its own open for as long as that helper lived: two descriptors
    for every session of such a server (red-team wave 37). Closing the subprocess transport
    also lets ``proc.wait`` return when a pipe was never read to its end."""
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()
