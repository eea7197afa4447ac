"""Smoke tests for the MCP peers, with the SDK's real client against real processes.

The test upstream runs as a process over Streamable HTTP and over stdio; the demo server runs
as ``python -m gateway.demo``. Both protocol eras are covered: ``mode="legacy"`` (initialize
handshake, 2025-11-25) and ``mode="auto"`` (``server/discover``, 2026-07-28 against these
servers).
"""

from __future__ import annotations

import itertools
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from tests.peers import REPO_ROOT, PeerProcess, child_env, demo_server, http_upstream

MODES = ["legacy", "auto"]
NEGOTIATED = {"legacy": "2025-11-25", "auto": "2026-07-28"}


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upstream") / "calls.jsonl"


@pytest.fixture(scope="module")
def upstream(call_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    log = tmp_path_factory.mktemp("upstream-out") / "upstream.log"
    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(call_log)}, log_path=log) as peer:
        yield peer


def read_call_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (itself, if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, polling; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        for _ in itertools.count():
            if predicate():
                return
            await anyio.sleep(0.05)


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


# ---------------------------------------------------------------- client callbacks


def elicitation_answering(answer: str, seen: list[types.ElicitRequestParams]) -> Any:
    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        seen.append(params)
        return types.ElicitResult(action="accept", content={"answer": answer})

    return on_elicit


def sampling_answering(text: str, seen: list[types.CreateMessageRequestParams]) -> Any:
    async def on_sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        seen.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=text),
            model="test-model",
            stop_reason="endTurn",
        )

    return on_sample


# ---------------------------------------------------------------- test upstream, HTTP


@pytest.mark.parametrize("mode", MODES)
async def test_http_list_and_echo(upstream: PeerProcess, mode: str) -> None:
    async with Client(upstream.url, mode=mode) as client:
        assert client.protocol_version == NEGOTIATED[mode]
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "add", "execute_query", "delete_item", "write_file"} <= names
        assert {"slow_progress", "ask_user", "sample", "crash", "hang", "calls_seen"} <= names
        assert {"test_simple_text", "test_tool_with_progress", "test_elicitation"} <= names
        result = await client.call_tool("echo", {"text": f"hello {mode}"})
        assert not result.is_error
        assert text_of(result) == f"hello {mode}"
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert text_of(added) in {"5", "5.0"}


@pytest.mark.parametrize("mode", MODES)
async def test_http_tool_annotations(upstream: PeerProcess, mode: str) -> None:
    async with Client(upstream.url, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    delete = tools["delete_item"].annotations
    assert delete is not None and delete.destructive_hint is True
    echo = tools["echo"].annotations
    assert echo is not None and echo.read_only_hint is True


@pytest.mark.parametrize("mode", MODES)
async def test_http_progress(upstream: PeerProcess, mode: str) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with Client(upstream.url, mode=mode) as client:
        result = await client.call_tool(
            "slow_progress", {"steps": 4, "delay_ms": 10}, progress_callback=on_progress
        )
    assert text_of(result) == "done after 4 steps"
    assert [u[0] for u in updates] == [1, 2, 3, 4]
    assert all(u[1] == 4 for u in updates)


@pytest.mark.parametrize("mode", MODES)
async def test_http_elicitation(upstream: PeerProcess, mode: str) -> None:
    seen: list[types.ElicitRequestParams] = []
    async with Client(
        upstream.url, mode=mode, elicitation_callback=elicitation_answering("blue", seen)
    ) as client:
        result = await client.call_tool("ask_user", {"question": "favourite colour?"})
    assert not result.is_error, text_of(result)
    assert text_of(result) == "blue"
    assert len(seen) == 1
    assert isinstance(seen[0], types.ElicitRequestFormParams)
    assert seen[0].message == "favourite colour?"


@pytest.mark.parametrize("mode", MODES)
async def test_http_sampling(upstream: PeerProcess, mode: str) -> None:
    seen: list[types.CreateMessageRequestParams] = []
    async with Client(
        upstream.url, mode=mode, sampling_callback=sampling_answering("forty-two", seen)
    ) as client:
        result = await client.call_tool("sample", {"prompt": "meaning of life?"})
    assert not result.is_error, text_of(result)
    assert text_of(result) == "forty-two"
    assert len(seen) == 1
    first = seen[0].messages[0].content
    assert isinstance(first, types.TextContent) and first.text == "meaning of life?"


async def test_http_logging_legacy(upstream: PeerProcess) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(upstream.url, mode="legacy", logging_callback=on_log) as client:
        with pytest.warns(MCPDeprecationWarning):  # logging is deprecated in 2026-07-28
            await client.set_logging_level("debug")
        await client.call_tool("test_tool_with_logging", {})
    assert [entry.data for entry in logs] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]


async def test_http_logging_modern(upstream: PeerProcess) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(upstream.url, mode="auto", logging_callback=on_log, log_level="info") as c:
        await c.call_tool("test_tool_with_logging", {})
    assert len(logs) == 3


async def test_http_call_log_and_calls_seen(upstream: PeerProcess, call_log: Path) -> None:
    marker = f"select '{uuid.uuid4()}'"
    async with Client(upstream.url, mode="legacy") as client:
        result = await client.call_tool("execute_query", {"sql": marker})
        assert text_of(result) == marker
        seen = await client.call_tool("calls_seen", {})
    records = read_call_log(call_log)
    assert {"tool": "execute_query", "arguments": {"sql": marker}} in [
        {"tool": r.get("tool"), "arguments": r.get("arguments")} for r in records
    ]
    assert "execute_query" in json.dumps(seen.structured_content or text_of(seen))


async def test_http_hang_is_cancellable(upstream: PeerProcess, call_log: Path) -> None:
    async with Client(upstream.url, mode="legacy") as client:
        with anyio.move_on_after(0.5) as scope:
            await client.call_tool("hang", {})
        assert scope.cancelled_caught
        # The session still works after the cancelled call.
        assert text_of(await client.call_tool("echo", {"text": "still here"})) == "still here"
    await eventually(lambda: any(r.get("event") == "cancelled" for r in read_call_log(call_log)))


async def test_http_crash_kills_the_process(call_log: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(log)}) as peer:
        # SDK 2.3.0 raises an ExceptionGroup (nested TaskGroup groups) around
        # MCPError(-32000, "SSE stream ended and reconnection attempts were exhausted").
        with pytest.raises((MCPError, ExceptionGroup)) as info:
            async with Client(peer.url, mode="legacy", read_timeout_seconds=10) as client:
                await client.call_tool("crash", {})
        assert any(isinstance(e, MCPError) for e in leaves(info.value))
        await eventually(lambda: not peer.alive())
        assert peer.proc.returncode == 17
    assert [r["tool"] for r in read_call_log(log)] == ["crash"]


async def test_http_stateless_variant(tmp_path: Path) -> None:
    with http_upstream(stateless=True) as peer:
        async with Client(peer.url, mode="legacy") as client:
            assert text_of(await client.call_tool("echo", {"text": "x"})) == "x"
        async with Client(peer.url, mode="auto") as client:
            assert text_of(await client.call_tool("echo", {"text": "y"})) == "y"


# ---------------------------------------------------------------- test upstream, stdio


def stdio_params(call_log: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.servers.upstream", "--stdio"],
        env=child_env({"UPSTREAM_CALL_LOG": str(call_log)}),
        cwd=str(REPO_ROOT),
    )


@pytest.mark.parametrize("mode", MODES)
async def test_stdio_end_to_end(tmp_path: Path, mode: str) -> None:
    log = tmp_path / "calls.jsonl"
    updates: list[float] = []
    elicited: list[types.ElicitRequestParams] = []
    sampled: list[types.CreateMessageRequestParams] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    async with Client(
        stdio_params(log),
        mode=mode,
        elicitation_callback=elicitation_answering("green", elicited),
        sampling_callback=sampling_answering("sampled!", sampled),
    ) as client:
        assert client.protocol_version == NEGOTIATED[mode]
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "ask_user", "sample", "slow_progress"} <= names
        assert text_of(await client.call_tool("echo", {"text": "over stdio"})) == "over stdio"
        await client.call_tool(
            "slow_progress", {"steps": 3, "delay_ms": 5}, progress_callback=on_progress
        )
        assert text_of(await client.call_tool("ask_user", {"question": "colour?"})) == "green"
        assert text_of(await client.call_tool("sample", {"prompt": "hi"})) == "sampled!"
    assert updates == [1, 2, 3]
    assert len(elicited) == 1 and len(sampled) == 1
    tools = [r["tool"] for r in read_call_log(log)]
    assert tools[:2] == ["echo", "slow_progress"]
    assert {"ask_user", "sample"} <= set(tools)


# ---------------------------------------------------------------- demo server


@pytest.mark.parametrize("mode", MODES)
async def test_demo_server_list_and_call(mode: str) -> None:
    with demo_server() as peer:
        async with Client(peer.url, mode=mode) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {
                "list_notes",
                "get_note",
                "search_notes",
                "create_note",
                "update_note",
                "delete_note",
                "run_report",
            }
            get_note = tools["get_note"].annotations
            assert get_note is not None and get_note.read_only_hint is True
            delete_note = tools["delete_note"].annotations
            assert delete_note is not None and delete_note.destructive_hint is True

            created = await client.call_tool("create_note", {"title": "t", "body": "gateway"})
            assert not created.is_error
            assert created.structured_content is not None
            note_id = created.structured_content["id"]
            found = await client.call_tool("search_notes", {"query": "gateway"})
            assert found.structured_content is not None
            assert note_id in [n["id"] for n in found.structured_content["notes"]]
            await client.call_tool("delete_note", {"id": note_id})
            missing = await client.call_tool("get_note", {"id": note_id})
            assert missing.is_error
            report = await client.call_tool("run_report", {"kind": "word_count"})
            assert "words" in text_of(report)


async def test_demo_server_in_process() -> None:
    from gateway.demo import build_demo_server

    async with Client(build_demo_server()) as client:
        listed = await client.call_tool("list_notes", {})
        assert listed.structured_content is not None
        assert len(listed.structured_content["notes"]) == 2
