"""Start the targets of ``bench_peers.py``: the upstream and celgate from one git revision,
and the peers users would pick instead, each from its own virtual environment.

Each peer's venv is created on first use under ``~/.cache/celgate-peers/<peer>`` (override
the folder with ``CELGATE_PEERS_CACHE``), so their pins never meet ours or each other's:

- ``fastmcp``: ``create_proxy(url)`` (``fastmcp_proxy.py``), no policy;
- ``mcp-policy-gateway``: its HTTP transport, a bearer token, a policy like celgate's
  "CEL rule + limit" (a regex deny rule, an allow rule on ``echo`` with a token bucket);
- ``contextforge``: ``mcpgateway`` (uvicorn, one worker, sqlite, in-memory cache), the
  upstream registered as a gateway and ``echo`` put in a virtual server, an admin JWT. Its
  per-client limit (100 calls a minute, lockout after 5 violations) and its SSRF guard
  (refuses loopback upstreams) are raised, or it cannot be measured at all.

Nothing binds or connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers import PeerProcess, free_port, port_open, stop_process  # noqa: E402

CACHE = Path(os.environ.get("CELGATE_PEERS_CACHE", Path.home() / ".cache/celgate-peers"))
PINS: dict[str, tuple[str, tuple[str, ...]]] = {  # peer: (python, requirements)
    "fastmcp": ("3.11", ("fastmcp==4.2.3", "uvloop", "httptools")),
    "mcp-policy-gateway": ("3.11", ("mcp-policy-gateway==0.1.0",)),
    "contextforge": ("3.12", ("mcp-contextforge-gateway==1.1.0",)),  # needs Python >= 3.12
}
SECRET_RULE = "(?i)(password|secret)="


@dataclass
class Started:
    """A running target process: its MCP URL, the bearer token it wants, whether its
    children are part of it (forked workers) or apart (a stdio upstream)."""

    peer: PeerProcess
    url: str
    token: str | None = None
    tool: str = "echo"
    tree: bool = True


def venv_python(peer: str) -> Path:
    """The peer's interpreter, its venv created and filled on first use."""
    python = CACHE / peer / "bin" / "python"
    if python.exists():
        return python
    version, pins = PINS[peer]
    base = _interpreter(version)
    subprocess.run([base, "-m", "venv", str(CACHE / peer)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    return python


def _interpreter(version: str) -> str:
    """A Python of ``version`` (this one if it matches, else ``pythonX.Y`` on PATH)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    found = subprocess.run(
        ["sh", "-c", f"command -v python{version}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not found:
        raise RuntimeError(f"no python{version} on PATH to build this peer's venv")
    return found


def launch(
    argv: list[str], log: Path, port: int, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> PeerProcess:
    """Start ``argv``; return once ``port`` accepts connections (or fail with its log)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    peer = PeerProcess(proc, port, "", argv, log)
    deadline = time.monotonic() + 120
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{argv[0]} did not start:\n{peer.output()[-3000:]}")
        time.sleep(0.1)
    return peer


# --------------------------------------------------------------------------- celgate


def short_rev(rev: str) -> str:
    """The commit ``rev`` names, as the report records it (``worktree`` stays as it is)."""
    if rev == "worktree":
        return rev
    argv = ["git", "-C", str(ROOT), "rev-parse", "--short", rev]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def unpack_tree(rev: str, into: Path) -> Path:
    """``gateway/`` and ``tests/`` as of ``rev`` (``worktree``: this checkout as it is)."""
    if rev == "worktree":
        return ROOT
    tree = into / "tree"
    tree.mkdir()
    archive = ["git", "-C", str(ROOT), "archive", rev, "gateway", "tests"]
    data = subprocess.run(archive, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=data, check=True)
    return tree


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}


def start_upstream(tree: Path, folder: Path) -> Started:
    """The test upstream (the conformance "everything" scenarios plus ``echo``), HTTP."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.upstream", "--http", "--port", str(port)]
    peer = launch(argv, folder / "upstream.log", port, tree_env(tree), tree)
    return Started(peer, f"http://127.0.0.1:{port}/mcp")


def stdio_server(tree: Path) -> dict[str, Any]:
    """The same upstream over stdio, as a celgate server entry or SDK parameters."""
    args = ["-m", "tests.servers.upstream", "--stdio"]
    return {"command": sys.executable, "args": args, "env": {"PYTHONPATH": str(tree)}}


def start_celgate(
    tree: Path,
    folder: Path,
    policy: str,
    servers: dict[str, Any],
    argv: list[str] | None = None,
    **extra: Any,
) -> PeerProcess:
    """``celgate run`` of ``tree`` (or ``argv`` + the config path: a bench launcher)."""
    port = free_port()
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text(policy)
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "policy": "policy.yaml",
        "servers": servers,
        "anonymous": True,
        **extra,
    }
    path = folder / "celgate.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = argv or [sys.executable, "-m", "gateway.cli", "run", "--config"]
    return launch([*argv, str(path), "--json-logs"], folder / "gateway.log", port, tree_env(tree))


def start_bare_relay(folder: Path, upstream: str) -> Started:
    """``bare_relay.py``: celgate's server stack relaying bytes and nothing else (the floor
    a relay costs here before any policy, record or check; not a gateway to deploy)."""
    port = free_port()
    script = ROOT / "benchmarks" / "bare_relay.py"
    argv = [sys.executable, str(script), "--upstream", upstream, "--port", str(port)]
    peer = launch(argv, folder / "bare_relay.log", port)
    return Started(peer, f"http://127.0.0.1:{port}/mcp")


# --------------------------------------------------------------------------- peers


def start_fastmcp(folder: Path, upstream: str) -> Started:
    port = free_port()
    script = ROOT / "benchmarks" / "fastmcp_proxy.py"
    argv = [str(venv_python("fastmcp")), str(script), "--upstream", upstream, "--port", str(port)]
    peer = launch(argv, folder / "fastmcp.log", port)
    return Started(peer, f"http://127.0.0.1:{port}/mcp")


def start_mcp_policy_gateway(folder: Path, upstream: str) -> Started:
    port, token = free_port(), secrets.token_urlsafe(24)
    config = {
        "version": 1,
        "server": {"namespace": "never"},
        "audit": {"path": str(folder / "mpg-audit.jsonl")},
        "upstreams": {"up": {"transport": "http", "url": upstream}},
        "policies": {
            "bench": {
                "default": "deny",
                "rules": [
                    {
                        "name": "no-secrets",
                        "effect": "deny",
                        "tools": ["echo"],
                        "when": {"args.text": {"matches": SECRET_RULE}},
                    },
                    {"name": "echo", "effect": "allow", "tools": ["echo"], "rate_limits": ["r"]},
                ],
            }
        },
        "rate_limits": {"r": {"rate": 1_000_000, "per": "1s"}},
        "tokens": [{"name": "bench", "policy": "bench", "env": "MPG_BENCH_TOKEN"}],
    }
    path = folder / "mpg.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [str(CACHE / "mcp-policy-gateway" / "bin" / "mcp-policy-gateway")]
    venv_python("mcp-policy-gateway")
    argv += ["run", "-c", str(path), "--transport", "http", "--port", str(port), "--path", "/mcp"]
    env = {**os.environ, "MPG_BENCH_TOKEN": token}
    peer = launch(argv, folder / "mpg.log", port, env)
    return Started(peer, f"http://127.0.0.1:{port}/mcp", token)


def contextforge_env(folder: Path, port: int) -> dict[str, str]:
    """One worker, sqlite, in-memory cache and limiter, secrets made up per run; the limits
    that would stop a benchmark (and the loopback SSRF guard) raised."""
    strong = lambda: "Bench-" + secrets.token_urlsafe(24)  # noqa: E731
    return {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{folder / 'contextforge.db'}",
        "JWT_SECRET_KEY": strong(),
        "AUTH_ENCRYPTION_SECRET": strong(),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "PLATFORM_ADMIN_PASSWORD": strong(),
        "BASIC_AUTH_PASSWORD": strong(),
        "DEFAULT_USER_PASSWORD": strong(),
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "false",
        "LOG_LEVEL": "ERROR",
        "CACHE_TYPE": "memory",
        "SSRF_ALLOW_LOCALHOST": "true",
        "RATE_LIMITING_REDIS_ENABLED": "false",
        "RATE_LIMIT_MEDIUM_RPM": "100000000",
        "RATE_LIMIT_MEDIUM_BURST": "100000000",
        "RATE_LIMIT_LOCKOUT_ENABLED": "false",
        "TOOL_RATE_LIMIT": "100000000",
    }


def start_contextforge(folder: Path, upstream: str) -> Started:
    port = free_port()
    python = venv_python("contextforge")
    env = contextforge_env(folder, port)
    argv = [str(python.parent / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port)]
    peer = launch(argv, folder / "contextforge.log", port, env, folder)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        mint = [str(python), "-m", "mcpgateway.utils.create_jwt_token", "-u", "admin@example.com"]
        mint += ["--admin", "-e", "600"]
        token = subprocess.run(mint, env=env, capture_output=True, text=True, check=True)
        jwt = token.stdout.strip().splitlines()[-1]
        base = f"http://127.0.0.1:{port}"
        body = {"name": "up", "url": upstream, "transport": "STREAMABLEHTTP"}
        _post(f"{base}/gateways", body, jwt)
        tools = _get(f"{base}/tools?limit=0", jwt)
        tools = tools if isinstance(tools, list) else tools["items"]
        echo = next(t for t in tools if t["name"].endswith("echo"))
        server = {"server": {"name": "bench", "associated_tools": [echo["id"]]}}
        made = _post(f"{base}/servers", {**server, "visibility": "public"}, jwt)
    except BaseException:
        stop_process(peer.proc)
        raise
    return Started(peer, f"{base}/servers/{made['id']}/mcp", jwt, echo["name"])


def _wait_http(url: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _request(url: str, jwt: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=60) as resp:
        return json.loads(resp.read())


def _post(url: str, body: Any, jwt: str) -> Any:
    return _request(url, jwt, body)


def _get(url: str, jwt: str) -> Any:
    return _request(url, jwt)


# --------------------------------------------------------------------------- /proc


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def cpu_ticks(pid: int, tree: bool) -> int:
    """utime + stime (fields 14, 15 of /proc/PID/stat), with live descendants if ``tree``."""
    total = 0
    for p in [pid, *(descendants(pid) if tree else [])]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def memory_kb(pid: int, tree: bool) -> tuple[int, int]:
    """(RSS, PSS) in kB summed over the process (and its descendants if ``tree``): forked
    workers share pages, which RSS counts once per process and PSS splits between them."""
    rss = pss = 0
    for p in [pid, *(descendants(pid) if tree else [])]:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def write_report(output: Path, script: str, md: str, note: str = "", **fields: Any) -> None:
    """``output`` (JSON: when, where, the command, ``fields``) and its Markdown beside it."""
    command = " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report = {"when": when, "python": platform.python_version(), "cpus": os.cpu_count()}
    report |= {"command": command, **fields}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = f"`{command}`, {when}\n\n{md}{note}\n"
    output.with_suffix(".md").write_text(text, encoding="utf-8")
    print(md + note)
