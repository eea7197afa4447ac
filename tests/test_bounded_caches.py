"""What callers choose is never kept at any length: every cache keyed by a caller's string
keeps short keys only. A thousand calls each naming a 4 MB tool, or presenting a 60 KB session
id, would otherwise hold gigabytes until the cache was cleared."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path

from gateway.auth.guard import MAX_CACHED_ID, SessionSigner
from gateway.config import load_config
from gateway.pipeline.gateway import MAX_CACHED_NAME
from gateway.policy import Call, Identity, decide, load_policy
from gateway.policy.cel_runtime import _regex_cached, regex
from gateway.policy.model import Decision
from gateway.server.build import build_gateway
from gateway.telemetry.audit import MAX_KEPT_ARGS, DecisionLog, args_digest
from tests.gateway_proc import write_config
from tests.peers import free_port

LONG = "t" * 100_000
# The module, not the function the package exports under the same name.
decide_module = importlib.import_module("gateway.policy.decide")


async def test_unlisted_tool_names_are_kept_short_only(tmp_path: Path) -> None:
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    gw = build_gateway(load_config(write_config(tmp_path, "default: deny\n", servers, free_port())))
    try:
        short = "a" * MAX_CACHED_NAME
        assert gw.tool_info("up", short) is gw.tool_info("up", short)  # kept
        gw.tool_info("up", LONG)
        assert ("up", LONG) not in gw.unlisted
        assert gw.tool_info("up", LONG).risk == gw.tool_info("up", "t").risk  # still classified
    finally:
        await gw.close()


def test_a_long_tool_name_is_not_kept_by_decide(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "default: deny\ntools:\n  '*':\n    rules:\n"
        "      - {id: named, when: 'tool.name.startsWith(\"t\")', action: allow}\n"
    )
    policy = load_policy([rules])
    now = datetime(2026, 11, 30, tzinfo=UTC)
    for name in ("t", LONG):
        call = Call(tool=name, server="up", args={}, identity=Identity("bot", "bot"))
        assert decide(policy, call, now).effect == "allow"
    kept = [key for key in decide_module._SHARED if key[1] == "tool"]
    assert any(key[2][0] == "t" for key in kept)
    assert all(len(key[2][0]) <= decide_module.MAX_SHARED_NAME for key in kept)


def test_long_session_ids_are_checked_without_being_kept() -> None:
    signer = SessionSigner("k" * 32)
    before = signer._recent_mac.cache_info().currsize
    long_id = "s" * (MAX_CACHED_ID + 1)
    wrapped = signer.wrap("up", "bot", long_id)
    assert signer.unwrap("up", "bot", wrapped) == long_id
    assert signer.unwrap("up", "other-grant", wrapped) is None
    assert signer._recent_mac.cache_info().currsize == before
    assert signer.unwrap("up", "bot", signer.wrap("up", "bot", "short")) == "short"
    assert signer._recent_mac.cache_info().currsize == before + 1


def test_long_patterns_are_compiled_without_being_kept() -> None:
    before = _regex_cached.cache_info().currsize
    pattern = "(a|b)" * 300
    assert regex(pattern).search("ab" * 300) is not None
    assert _regex_cached.cache_info().currsize == before


def test_large_arguments_stay_in_the_log_line_not_in_memory() -> None:
    """With ``log_arguments`` on, the 500 records kept in memory hold small arguments only."""
    log = DecisionLog(log_arguments=True)
    decision = Decision(effect="allow", rule="default", reason="ok", revision="r")
    small = Call(tool="echo", server="up", args={"text": "hi"}, identity=Identity("bot", "bot"))
    big_text = "x" * (MAX_KEPT_ARGS + 1)
    big = Call(tool="echo", server="up", args={"text": big_text}, identity=small.identity)
    assert log.record("d1", small, decision, 0.1)["args"] == {"text": "hi"}
    written = log.record("d2", big, decision, 0.1)
    assert written["args"] == {"text": big_text}  # what the line is made of
    kept_small, kept_big = log.recent
    assert kept_small["args"] == {"text": "hi"}
    assert "omitted" in kept_big["args"] and big_text not in str(kept_big)
    assert kept_big["args_digest"] == written["args_digest"] == args_digest(big.args)


def test_arguments_of_many_small_containers_stay_in_the_log_line_not_in_memory() -> None:
    """64 KiB of ``[],`` is 21,000 lists: 1.4 MB kept per record, 728 MiB for 500 denied
    calls (red-team wave 33). Records keep arguments of at most MAX_KEPT_CONTAINERS."""
    from gateway.telemetry.audit import MAX_KEPT_CONTAINERS

    log = DecisionLog(log_arguments=True)
    decision = Decision(effect="deny", rule="default", reason="no", revision="r")
    lists = [[] for _ in range(MAX_KEPT_CONTAINERS + 1)]
    call = Call(tool="echo", server="up", args={"x": lists}, identity=Identity("bot", "bot"))
    written = log.record("d1", call, decision, 0.1)
    assert written["args"] == {"x": lists}  # the line has them
    (kept,) = log.recent
    assert "omitted" in kept["args"]
    fewer = Call(tool="echo", server="up", args={"x": [[]] * 10}, identity=call.identity)
    assert log.record("d2", fewer, decision, 0.1)["args"] == log.recent[-1]["args"]
