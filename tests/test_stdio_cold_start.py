"""A stdio server slower to start than its ``timeout`` is served: the clock of a request's
silence starts at the child's first output after its (re)start, and the bridge keeps that
deadline. The relay and ``/mcp`` kept one of their own from the request's start and cut a
legacy-era session's ``initialize`` (a new process each) as "sent nothing for 1 s", so such a
server could not be used at all."""

from __future__ import annotations

import hashlib
import shlex
import sys
from collections.abc import Iterator

import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import REPO_ROOT

KEY = "cgk_cold-start-0123456789abcdef"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
START_SECONDS = 2.5  # longer than the timeout
TIMEOUT = 1


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    python = shlex.quote(sys.executable)
    slow = {
        "command": "sh",
        "args": ["-c", f"sleep {START_SECONDS}; exec {python} -m tests.servers.upstream --stdio"],
        "cwd": str(REPO_ROOT),
        "env": {"PYTHONPATH": str(REPO_ROOT)},
        "timeout": TIMEOUT,
    }
    grants = {"bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    folder = tmp_path_factory.mktemp("cold-start")
    with run_gateway(folder, POLICY, {"slow": slow}, grants=grants) as gateway:
        yield gateway


@pytest.mark.parametrize("face", ["relay", "aggregate"])
async def test_a_session_on_a_slow_starting_child_is_served(gw: GatewayProcess, face: str) -> None:
    url, name = (gw.url("slow"), "echo") if face == "relay" else (f"{gw.base}/mcp", "slow__echo")
    async with client(url, KEY, mode="legacy") as session:  # a new process for this session
        result = await session.call_tool(name, {"text": "first"})
    assert text_of(result) == "first"
