"""``celgate run``: load config (or the embedded default) and serve the gateway.

The listening socket is bound first, so a taken port is one line before any banner or admin
token. SIGTERM, like Ctrl-C, unwinds through the ``finally`` that stops the embedded demo
server: uvicorn re-raises the signal it caught once it has shut down, and our handler turns it
into ``SystemExit`` instead of the default immediate death.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import math
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from gateway.auth.identity import hash_key
from gateway.cli.admin import DEFAULT_URL as ADMIN_URL
from gateway.cli.keys import ADMIN_PREFIX, new_secret
from gateway.config import (
    LOOPBACK_HOSTS,
    AdminConfig,
    GatewayConfig,
    ListenConfig,
    ServerConfig,
    load_config,
)
from gateway.errors import ConfigError
from gateway.telemetry.audit import configure_logging

DEMO_PORT = 8787
GRACEFUL_SECONDS = 5
EXIT_TERMINATED = 143  # 128 + SIGTERM


def rules_dir() -> Path:
    """The example rules: package data in a wheel, the repository's ``rules/`` otherwise."""
    here = Path(__file__).resolve().parent.parent  # gateway/
    packaged = here / "_rules"
    return packaged if packaged.is_dir() else here.parent / "rules"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"celgate: the demo server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit("celgate: the demo server did not start within 20 s")


def _ends_with_parent() -> None:
    """In the demo server's process: SIGTERM when the gateway dies, however it dies (it was
    left running, orphaned, with no policy in front of it). Linux only."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


#: The variable the demo server reads its secret from (``gateway.demo.server.SECRET_ENV``;
#: the demo stands alone, neither importing nor imported by the rest of gateway).
SECRET_ENV = "CELGATE_DEMO_SECRET"


@contextlib.contextmanager
def demo_upstream() -> Iterator[tuple[str, str]]:
    """Start the packaged demo MCP server as a local Streamable HTTP process: its URL, and
    the secret it takes only requests bearing (the gateway's alone: its loopback port is
    every local process's to reach, and went round the policy, red-team wave 69)."""
    port = _free_port()
    secret = secrets.token_urlsafe(32)
    cmd = [sys.executable, "-m", "gateway.demo", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, SECRET_ENV: secret}
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_ends_with_parent)  # (no thread runs yet)
    try:
        _wait_port(port, proc, time.monotonic() + 20)
        yield f"http://127.0.0.1:{port}/mcp", secret
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_config(
    upstream_url: str, port: int, admin_token: str | None = None, secret: str | None = None
) -> GatewayConfig:
    digest = hash_key(admin_token) if admin_token else None
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return GatewayConfig(
        source="<embedded default>",
        listen=ListenConfig(port=port),
        policy=(rules_dir() / "demo.yaml",),
        servers={"demo": ServerConfig("demo", url=upstream_url, headers=headers)},
        anonymous=True,
        admin=AdminConfig(token_sha256=digest),
    )


def _banner(config: GatewayConfig) -> None:
    host = config.listen.host
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    base = f"http://{host}:{config.listen.port}"
    print(f"celgate {config.source}: serving on {base}", flush=True)
    for name in config.servers:
        print(f"  MCP endpoint  {base}/mcp/{name}", flush=True)
    if config.anonymous:
        print(
            "  WARNING: anonymous access is ON: any local process may call tools as "
            "'anonymous' (loopback only; give agents keys for anything else)",
            flush=True,
        )
    first = next(iter(config.servers))
    key = "" if config.anonymous else " --key <agent key>"
    print(f"  try it:       celgate try {base}/mcp/{first}{key}", flush=True)
    if base != ADMIN_URL:  # the admin commands' default: they reached another gateway, or none
        print(f"  admin CLI:    export CELGATE_URL={base}", flush=True)


def serve(config: GatewayConfig, sock: socket.socket) -> int:
    from gateway.server.app import build_app
    from gateway.server.build import build_gateway
    from gateway.wire.protocol import protocol_class

    if config.anonymous and config.listen.host not in LOOPBACK_HOSTS:
        print("celgate: refusing to serve anonymously on a non-loopback address", file=sys.stderr)
        return 2
    try:
        gateway = build_gateway(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"celgate: CEL engine {config.cel.engine!r} is not installed: {exc}", file=sys.stderr)
        return 1
    app = build_app(gateway)
    _banner(config)
    _raise_fd_limit(config.security.max_connections)
    uv = uvicorn.Config(
        app,
        host=config.listen.host,
        port=config.listen.port,
        loop="uvloop",
        # uvicorn's httptools protocol with client connections bounded (security: in the
        # config), writing once per event-loop pass; no WebSocket: the gateway serves none.
        # The protocol keeps connections alive for exactly security.keepalive_timeout.
        http=protocol_class(config.security),
        ws="none",
        timeout_keep_alive=math.ceil(config.security.keepalive_timeout),
        log_level="warning",
        # uvicorn's own handlers wrote plain text into the JSON log (configure_logging
        # routes every library's lines through the gateway's sink instead).
        log_config=None,
        access_log=False,
        server_header=False,
        # request.ip (visible to CEL) is the socket's peer unless that peer is a proxy the
        # config names (listen.trusted_proxies): X-Forwarded-For is believed from it alone.
        proxy_headers=bool(config.listen.trusted_proxies),
        forwarded_allow_ips=list(config.listen.trusted_proxies) or None,
        lifespan="on",
        # Open SSE streams never end by themselves: on SIGTERM, give requests a few seconds,
        # then close, so a deploy or a container stop is never held up by an idle agent.
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    # run(), not asyncio.run(serve()): only run() installs uvloop
    uvicorn.Server(uv).run(sockets=[sock])
    return 0


# Descriptors beyond client connections: upstream connections, stdio servers, logs, Valkey.
FD_RESERVE = 256
#: The soft descriptor limit asked for at least (up to the hard limit): a client connection
#: may hold one upstream connection per server (a ``/mcp`` listen, a merged GET), so
#: ``max_connections`` plus a fixed reserve ran out (one agent's 256 listens on five servers
#: took every descriptor under a soft limit of 1,024; red-team wave 33).
FD_WANTED = 65536


def _raise_fd_limit(max_connections: int) -> None:
    """Let the process hold ``max_connections`` clients and their upstream connections:
    raise the soft descriptor limit (to ``FD_WANTED`` or more, within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    want = max(need, FD_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < need:
        print(
            f"  WARNING: security.max_connections is {max_connections} but this process may "
            f"open only {soft} files; lower it or raise the limit (ulimit -n)",
            flush=True,
        )


def _port(text: str) -> int:
    """``--port``: a whole number from 0 to 65535 (0: any free port), or one line saying so."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def bind(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound now (uvicorn listens on it), or one line saying
    why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise SystemExit(f"celgate: cannot listen on {host}:{port}: {why}") from None
    return sock


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_TERMINATED)


def not_dumpable() -> None:
    """Make this process's memory and environment unreadable to other processes of its user
    (``PR_SET_DUMPABLE`` 0: ``/proc/<pid>/environ`` and ``mem`` become root's, ptrace is
    refused). The stdio servers it starts run as its user, and one could otherwise read the
    admin token and every secret in the gateway's environment, which their own filtered
    environment leaves out. Linux only; elsewhere nothing changes."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


#: glibc's ``mallopt`` parameter, and the size from which a block is mapped on its own.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def large_blocks_returned() -> bool:
    """Have every block of 128 KiB or more mapped on its own, so that freeing it gives it
    back to the system (glibc; elsewhere False and nothing changes). glibc raises that
    threshold as large blocks are freed, up to 32 MiB, and keeps the blocks under it in its
    heap: after a burst of large bodies and answers the gateway kept hundreds of MiB it no
    longer used (a container's memory limit counts them). Measured: 100 echoes of 3.9 MiB,
    745 MiB held after the burst, 566 MiB with this."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def run_command(ns: argparse.Namespace) -> int:
    not_dumpable()
    large_blocks_returned()
    configure_logging(json_logs=ns.json_logs)
    signal.signal(signal.SIGTERM, _terminated)
    # Ctrl-C ends the run with 130 even when started where SIGINT is ignored (a background
    # job of a non-interactive shell): uvicorn restores the handler it found, then re-raises.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A SIGHUP (a config sidecar, systemd's ExecReload, a closed terminal) before the
    # reloader's own handler is in place reloads nothing, rather than ending the run.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if ns.config is None:
        return _run_demo(DEMO_PORT if ns.port is None else ns.port)
    try:
        config = load_config(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if ns.port is not None:  # 0: any free port
        config = _with_port(config, ns.port)
    with bind(config.listen.host, config.listen.port) as sock:
        return serve(_with_port(config, sock.getsockname()[1]), sock)  # (0: the one taken)


def _run_demo(port: int) -> int:
    with bind("127.0.0.1", port) as sock:
        port = sock.getsockname()[1]  # (0: the one taken)
        # (generated as `celgate admin-token new` makes them: always checked, see AdminThrottle)
        given = os.environ.get("CELGATE_ADMIN_TOKEN")
        token = given or new_secret(ADMIN_PREFIX)[0]
        with demo_upstream() as (url, secret):
            config = demo_config(url, port, token, secret)
            if given:
                print("  admin token:  $CELGATE_ADMIN_TOKEN's, as set", flush=True)
            else:  # (unset, or set empty: a token was made, and is told)
                print(f"  admin token for this run: export CELGATE_ADMIN_TOKEN={token}")
            return serve(config, sock)


def _with_port(config: GatewayConfig, port: int) -> GatewayConfig:
    from dataclasses import replace

    return replace(config, listen=replace(config.listen, port=port))


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="gateway config file (YAML)")
    parser.add_argument("--port", type=_port, help="override listen.port")
    parser.add_argument(
        "--json-logs", action="store_true", default=None, help="JSON log lines even on a TTY"
    )
    parser.set_defaults(func=run_command)


PARSERS = {"run": _configure}
