"""What the policy says a tool is, and what a limit keys it by, mean what docs/policy.md says:
a shadow entry's ``risk:`` changes nothing, ``risk:`` and ``kind:`` come each from the most
specific entry that sets it, the riskiest verb of a name counts, a tool first seen on a call
is decided by its annotations, names a server does not list share one ``scope: tool`` bucket,
the in-memory limiter is bounded, a rule file's suffix is read in any case, and a held call's
request masks what any matching entry marks secret."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.pipeline.admission import admit
from gateway.policy import Call, Identity, decide
from gateway.policy.loader import load_policy, rule_files
from gateway.policy.model import CompiledPolicy
from gateway.policy.risk import classify, override_for, tool_info
from gateway.policy.secrets import SECRET, mask_args
from gateway.policy.servers import entry_warnings
from gateway.policy.tester import run_file
from gateway.ratelimit.base import Bucket
from gateway.ratelimit.memory import MemoryRateLimiter
from gateway.server.build import build_gateway
from tests.gateway_proc import write_config
from tests.peers import free_port

GATE = """
version: "1"
default: deny
tools:
  "*":
    rules:
      - {when: 'tool.risk == "high"', action: require_approval, approval: {mode: retry}}
      - action: allow
"""


def policy_of(tmp_path: Path, **files: str) -> CompiledPolicy:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return load_policy([tmp_path])


class TestRiskAndKind:
    def test_a_shadow_entrys_risk_is_not_enforced(self, tmp_path: Path) -> None:
        trial = 'version: "1"\nmode: shadow\ntools:\n  delete_item: {risk: medium, action: deny}\n'
        policy = policy_of(tmp_path, **{"gate.yaml": GATE, "trial.yaml": trial})
        assert override_for(policy, "up", "delete_item") == (None, None)
        info = tool_info(policy, "up", {"name": "delete_item"})
        assert (info.kind, info.risk) == ("delete", "high")
        decision = decide(policy, Call("delete_item", server="up", info=info))
        assert decision.effect == "require_approval"

    def test_risk_and_kind_each_come_from_the_most_specific_entry_setting_it(
        self, tmp_path: Path
    ) -> None:
        rules = (
            'version: "1"\ndefault: deny\ntools:\n'
            '  "vault/*": {risk: high}\n  vault/read_secret: {kind: read}\n'
        )
        policy = policy_of(tmp_path, **{"r.yaml": rules})
        assert override_for(policy, "vault", "read_secret") == ("read", "high")
        info = tool_info(policy, "vault", {"name": "read_secret"})
        assert (info.kind, info.risk) == ("read", "high")
        other = tool_info(policy, "vault", {"name": "list_keys"})
        assert (other.kind, other.risk) == ("read", "high")  # the glob's risk, the verb's kind

    def test_an_entry_that_only_describes_a_tool_decides_nothing(self, tmp_path: Path) -> None:
        """``purge_notes: {risk: high}`` (or ``secret_args``, ``kind``) beside ``"*"`` rules
        that hold high-risk tools decided as ``{}``: the tool ran unapproved, and raising its
        risk loosened the policy (red-team wave 61). The rules under ``"*"`` decide it now,
        reading the risk it sets; ``celgate check`` tells of one nothing else decides."""
        rules = (
            'version: "1"\ndefault: deny\ntools:\n  "*":\n    rules:\n'
            "      - {id: hold, when: 'tool.risk == \"high\"', action: require_approval}\n"
            "      - {id: reads, when: 'tool.kind == \"read\"', action: allow}\n"
            "  notes/purge_notes: {risk: high}\n"
            "  notes/sign_in: {secret_args: [password], kind: write}\n"
            "  notes/list_notes: {kind: read, risk: low}\n"
            "  other/drop_all: {reason: never}\n"
        )
        policy = policy_of(tmp_path, **{"r.yaml": rules})
        effects = {}
        for server, name in (
            ("notes", "purge_notes"),
            ("notes", "sign_in"),
            ("notes", "list_notes"),
            ("other", "drop_all"),
        ):
            info = tool_info(policy, server, {"name": name})
            decision = decide(policy, Call(name, server=server, info=info))
            effects[name] = (decision.effect, decision.rule)
        assert effects == {
            "purge_notes": ("require_approval", "hold"),
            "sign_in": ("deny", "default"),  # a write of no high risk: no rule holds
            "list_notes": ("allow", "reads"),
            "drop_all": ("require_approval", "hold"),  # unknown verb: execute/high
        }
        told = [str(problem) for problem in entry_warnings(policy)]
        assert told == []  # "*" decides each of them
        (tmp_path / "alone").mkdir()
        alone = policy_of(
            tmp_path / "alone", **{"r.yaml": "default: deny\ntools:\n  x: {risk: low}\n"}
        )
        told = [str(problem) for problem in entry_warnings(alone)]
        assert len(told) == 1 and "only describes the tool" in told[0] and "(deny)" in told[0]

    @pytest.mark.parametrize(
        ("name", "kind", "risk"),
        [
            ("github_find_and_delete_branches", "delete", "high"),
            ("fetch_and_purge_queue", "delete", "high"),
            ("get_then_run_script", "execute", "high"),
            ("repo_list", "read", "low"),
            ("listAndUpdateRows", "write", "medium"),
            ("frobnicate", "execute", "high"),
            # A read word beside a risky verb the lists lacked read as a read, and a file
            # that allows reads ran it with no human (red-team wave 60).
            ("grant_read_access", "write", "medium"),
            ("find_and_replace", "write", "medium"),
            ("mark_as_read", "write", "medium"),
            ("list_and_cancel_jobs", "execute", "high"),
            ("clear_search_history", "delete", "high"),
            ("kill_list", "delete", "high"),
            # ... and a joined action the lists do not know is unknown, never the read
            ("fetch_and_merge", "execute", "high"),
            ("get_and_frobnicate", "execute", "high"),
        ],
    )
    def test_the_riskiest_verb_of_a_name_counts(self, name: str, kind: str, risk: str) -> None:
        found = classify(name, None)
        assert (found.kind, found.risk) == (kind, risk)


@pytest.fixture
async def gw(tmp_path: Path) -> Any:
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}  # never reached: admit does not forward
    gateway = build_gateway(load_config(write_config(tmp_path, GATE, servers, free_port())))
    yield gateway
    await gateway.close()


async def test_a_tool_first_seen_on_a_call_is_decided_by_its_annotations(gw: Any) -> None:
    """The upstream lists ``get_report`` (destructive) only when the call makes the gateway
    read its tools again: the call is held, as the next one would be."""
    definition = {
        "name": "get_report",
        "inputSchema": {"type": "object"},
        "annotations": {"destructiveHint": True},
    }
    relisted: list[str] = []

    async def relist(server: str) -> None:  # what lifecycle.refresh_catalog records
        relisted.append(server)
        gw.observe(server, definition)

    gw.relist = relist
    call = Call("get_report", server="up", info=gw.tool_info("up", "get_report"))
    assert (call.info.kind, call.info.risk) == ("execute", "high")  # not listed: never harmless
    admission = await admit(gw, call)
    assert relisted == ["up"]
    assert admission.decision.effect == "require_approval"


async def test_a_name_no_entry_names_is_denied_without_reading_again(tmp_path: Path) -> None:
    """Under ``default: deny`` a name no entry matches is denied whatever its server says:
    read again, a name no server listed waited for the server, and a hidden one (listed,
    no entry) was denied at once, so the time told an agent which names exist (wave 40)."""
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}  # never reached: admit does not forward
    narrow = 'version: "1"\ndefault: deny\ntools:\n  "get_*": {action: allow}\n'
    gateway = build_gateway(load_config(write_config(tmp_path, narrow, servers, free_port())))
    relisted: list[str] = []

    async def relist(server: str) -> None:
        relisted.append(server)

    gateway.relist = relist
    try:
        for name in ("wipe_everything", "hidden_but_listed"):
            call = Call(name, server="up", info=gateway.tool_info("up", name))
            assert (await admit(gateway, call)).decision.rule == "default"
        assert relisted == []
        call = Call("get_new", server="up", info=gateway.tool_info("up", "get_new"))
        await admit(gateway, call)  # an entry names it: its definition may matter
        assert relisted == ["up"]
    finally:
        await gateway.close()


class TestToolScopedBuckets:
    RULES = (
        'version: "1"\ndefault: deny\ntools:\n  "*":\n    action: allow\n'
        "    limits: [{counter: per_tool, window: minute, max: 5, scope: tool}]\n"
    )

    def test_names_the_server_does_not_list_share_one_bucket(self, tmp_path: Path) -> None:
        policy = policy_of(tmp_path, **{"r.yaml": self.RULES})
        listed = Call("echo", server="up", info=tool_info(policy, "up", {"name": "echo"}))
        keys = {decide(policy, listed).limits[0].key}
        for made_up in ("x" * 1000, "y" * 1000, "zzz"):
            info = tool_info(policy, "up", {"name": made_up})
            unlisted = Call(made_up, server="up", info=replace(info, listed=False))
            keys.add(decide(policy, unlisted).limits[0].key)
        assert keys == {"per_tool|tool=up/echo", "per_tool|tool=up/<unlisted>"}

    async def test_the_gateway_marks_names_it_has_not_listed(self, gw: Any) -> None:
        gw.observe("up", {"name": "echo", "inputSchema": {"type": "object"}})
        assert gw.tool_info("up", "echo").listed
        assert not gw.tool_info("up", "made_up").listed


def test_the_memory_limiter_holds_at_most_its_cap() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(lambda: now[0], max_buckets=100)
    for i in range(1000):  # each its own key, each left draining for a day
        limiter.acquire_now([Bucket("c", f"k{i}", 1, 86_400.0)])
        assert len(limiter) <= 100
    # The newest keys are held exactly: a second call on the last one is refused.
    assert not limiter.acquire_now([Bucket("c", "k999", 1, 86_400.0)]).admitted


def test_a_rule_files_suffix_is_read_in_any_case(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text('version: "1"\ndefault: allow\n')
    (tmp_path / "Deny.YAML").write_text('version: "1"\ntools:\n  delete_item: {action: deny}\n')
    assert sorted(p.name for p, _ in rule_files([tmp_path])) == ["Deny.YAML", "base.yaml"]
    policy = load_policy([tmp_path])
    assert decide(policy, Call("delete_item", server="up")).effect == "deny"


def test_a_held_calls_request_masks_what_any_matching_entry_marks_secret(
    tmp_path: Path,
) -> None:
    rules = (
        'version: "1"\ndefault: deny\ntools:\n'
        "  write_file: {secret_args: [content]}\n"
        "  up/write_file: {action: require_approval}\n"
    )
    policy = policy_of(tmp_path, **{"r.yaml": rules})
    decision = decide(policy, Call("write_file", {"content": "s3cret"}, "up", Identity()))
    assert decision.effect == "require_approval"
    assert decision.secret_args == ("content",)
    assert mask_args({"content": "s3cret"}, decision.secret_args) == {"content": SECRET}


class TestOfflineAgreesWithTheGateway:
    """``celgate decide`` and policy test files classify a tool as the gateway does."""

    def decided(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
        (tmp_path / "gate.yaml").write_text(GATE)
        assert main(["decide", str(tmp_path / "gate.yaml"), "--server", "up", *argv]) == 0
        return str(json.loads(capsys.readouterr().out)["effect"])

    def test_decide_classifies_by_name_and_annotations(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert self.decided(tmp_path, capsys, "--tool", "delete_item") == "require_approval"
        assert self.decided(tmp_path, capsys, "--tool", "list_items") == "allow"
        read_only = '{"readOnlyHint": true}'
        assert self.decided(tmp_path, capsys, "--tool", "echo", "--annotations", read_only) == (
            "allow"
        )
        assert self.decided(tmp_path, capsys, "--tool", "echo") == "require_approval"
        assert self.decided(tmp_path, capsys, "--tool", "echo", "--risk", "low") == "allow"

    def test_policy_tests_classify_as_the_gateway_does(self, tmp_path: Path) -> None:
        (tmp_path / "gate.yaml").write_text(GATE)
        (tmp_path / "gate_test.yaml").write_text(
            "cases:\n"
            "  - {tool: delete_item, server: up, expect: {effect: require_approval}}\n"
            "  - {tool: list_items, server: up, expect: {effect: allow}}\n"
            "  - {tool: echo, server: up, annotations: {readOnlyHint: true},"
            " expect: {effect: allow}}\n"
            "  - {tool: delete_item, server: up, risk: low, expect: {effect: allow}}\n"
        )
        count, failures = run_file(tmp_path / "gate_test.yaml", {})
        assert (count, failures) == (4, [])
