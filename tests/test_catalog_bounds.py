"""What one server's ``tools/list`` may bring into the catalogue is bounded: a server that
answered every page with a new cursor had the gateway hold 1.6 GiB for the read's 15 s, at
every refresh and whenever an agent called a name the catalogue lacked. The tools read so far
are kept (a tool past them is an unlisted one: execute, high risk)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from gateway.config.model import ServerConfig
from gateway.inventory import discovery
from tests.peers import literal_upstream

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("cursor", "expected"), [("next", discovery.MAX_TOOLS), ("same", 100)])
async def test_a_list_that_never_ends_is_cut(tmp_path: Path, cursor: str, expected: int) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"endless": {"per_page": 50, "cursor": cursor}}))
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as up:
        tools = await discovery.list_tools(ServerConfig(name="endless", url=up.url))
    assert len(tools) == expected  # "same": the first page, and the second once
    assert len({t["name"] for t in tools}) == len(tools)


# The gateway's own reading of a server's tools went through the SDK's client, which reads a
# page whole and parses it before any bound above is looked at: one page of 1 GiB took the
# gateway from 110 MiB to 3 GiB (red-team wave 35), at start, at every refresh and whenever an
# agent called a name the catalogue lacked. A page is now read within MAX_ANSWER_BYTES (made
# small here), compressed answers are refused, and a stdio server's lines are bounded alike.


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_a_page_past_its_bound_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    monkeypatch.setattr(discovery, "MAX_ANSWER_BYTES", 1 << 20)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"big_list": {"mib": 4, "gzip": compressed}}))
    errors: dict[str, str] = {}
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as up:
        servers = {"big": ServerConfig(name="big", url=up.url)}
        found = await discovery.list_all(servers, errors=errors)
        assert found == {"big": None}
        script.write_text(json.dumps({"big_list": {"mib": 0}}))  # a page within the bound
        assert [t["name"] for t in (await discovery.list_all(servers))["big"] or []] == ["big"]
    assert "compressed" in errors["big"] if compressed else "past" in errors["big"]


async def test_a_stdio_line_past_its_bound_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "MAX_ANSWER_BYTES", 1 << 20)
    server = ServerConfig(
        name="odd",
        command=sys.executable,
        args=["-m", "tests.servers.odd_stdio"],
        env={"ODD_BIG_LIST_MIB": "4"},
        cwd=str(ROOT),
    )
    errors: dict[str, str] = {}
    assert await discovery.list_all({"odd": server}, errors=errors) == {"odd": None}
    small = dataclasses.replace(server, env={})
    found = await discovery.list_all({"odd": small})
    assert [t["name"] for t in found["odd"] or []] == ["echo"]


@pytest.mark.parametrize(("kib", "listed"), [(1, ["echo", "pinged"]), (100, ["echo"])])
async def test_a_long_line_the_list_does_not_await_is_not_read(kib: int, listed: list[str]) -> None:
    """A stdio server's stray long lines (a 16 MiB log notice) were each validated whole by
    the SDK's models: 4 s of the loop and 1.3 GB, at every refresh (red-team wave 58). Past
    64 KiB only an answer the list awaits is read: a server's padded ``ping`` is never seen
    (so never answered), a short one is."""
    server = ServerConfig(
        name="odd",
        command=sys.executable,
        args=["-m", "tests.servers.odd_stdio"],
        env={"ODD_LIST_PINGS_KIB": str(kib)},
        cwd=str(ROOT),
    )
    found = await discovery.list_all({"odd": server})
    assert [t["name"] for t in found["odd"] or []] == listed


async def test_a_page_of_too_many_objects_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within its bytes, a page of ``{},`` is 350 bytes a bracket once the SDK has read it:
    33 MiB took the gateway to 3.8 GiB (red-team wave 35). Objects and lists are counted."""
    monkeypatch.setattr(discovery, "MAX_ANSWER_CONTAINERS", 1000)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"endless": {"per_page": 600, "cursor": "next"}}))
    errors: dict[str, str] = {}
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as up:
        servers = {"many": ServerConfig(name="many", url=up.url)}
        assert await discovery.list_all(servers, errors=errors) == {"many": None}
    assert "objects and lists" in errors["many"]
