"""Raw-socket clients that misbehave on purpose, and the gateway's memory as the kernel sees it."""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Iterable
from pathlib import Path

MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def ensure_fd_limit(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards ``wanted``; return what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return wanted if soft == resource.RLIM_INFINITY else soft


def open_slow(port: int, first_bytes: bytes) -> socket.socket:
    """A connection that sent ``first_bytes`` of a request and nothing more (yet)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(first_bytes)
    return sock


def read_all(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """What the peer sends until it closes or ``deadline``; and whether it closed."""
    out = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def wait_all_closed(socks: Iterable[socket.socket], deadline: float) -> dict[socket.socket, bytes]:
    """Wait until the peer closed every socket (or ``deadline``); what each received."""
    got: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            got[sock] = b""
        open_count = len(got)
        while open_count and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    got[sock] += chunk
                else:
                    sel.unregister(sock)
                    open_count -= 1
        if open_count:
            raise AssertionError(f"{open_count} of {len(got)} connections still open")
    return got


def still_open(sock: socket.socket) -> bool:
    """No EOF and nothing to read at this instant (the peer neither answered nor closed)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # returns at once: bytes or EOF
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False


def close_all(socks: Iterable[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def request(port: int, raw: bytes, deadline: float = 5.0) -> tuple[socket.socket, bytes]:
    """Send a whole request on a new connection; the connection and the first reply's bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline)
    sock.sendall(raw)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    return sock, data
