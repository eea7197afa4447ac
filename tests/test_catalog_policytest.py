"""Risk classification, tool digests, and ``celgate test`` on passing and failing policy tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.inventory import pins as pins_module
from gateway.inventory.pins import Pins, tool_digest
from gateway.policy import load_policy
from gateway.policy.risk import classify, tool_info
from tests.peers import demo_server


class TestClassification:
    @pytest.mark.parametrize(
        ("name", "annotations", "kind", "risk"),
        [
            ("list_tables", None, "read", "low"),
            ("describe_cluster", {}, "read", "low"),
            ("create_user", None, "write", "medium"),
            ("put_object", None, "write", "medium"),
            ("delete_bucket", None, "delete", "high"),
            ("git_reset", None, "delete", "high"),
            ("terminateInstance", None, "delete", "high"),
            ("execute_query", None, "execute", "high"),
            ("runReport", None, "execute", "high"),
            ("frobnicate", None, "execute", "high"),  # unknown is never harmless
            ("write_query", None, "execute", "high"),  # the riskier verb of two counts
        ],
    )
    def test_name_verbs(self, name: str, annotations: dict | None, kind: str, risk: str) -> None:
        found = classify(name, annotations)
        assert (found.kind, found.risk) == (kind, risk)

    def test_annotations_beat_names(self) -> None:
        assert classify("delete_cache", {"readOnlyHint": True}).kind == "read"
        assert classify("get_and_purge", {"destructiveHint": True}).risk == "high"
        found = classify("list_things", {"readOnlyHint": True, "openWorldHint": True})
        assert (found.kind, found.risk, found.why) == ("read", "medium", "annotation readOnlyHint")

    def test_overrides_beat_annotations_and_names(self) -> None:
        found = classify("delete_cache", {"destructiveHint": True}, ("write", "low"))
        assert (found.kind, found.risk, found.why) == ("write", "low", "policy override")
        only_risk = classify("list_secrets", {"readOnlyHint": True}, (None, "high"))
        assert (only_risk.kind, only_risk.risk) == ("read", "high")

    def test_policy_override_reaches_cel(self, tmp_path: Path) -> None:
        rules = tmp_path / "p.yaml"
        rules.write_text(
            "tools:\n"
            "  db/list_secrets:\n"
            "    risk: high\n"
            "    rules:\n"
            "      - {when: 'tool.risk == \"high\"', action: require_approval}\n"
            "    action: allow\n"
        )
        policy = load_policy([rules])
        info = tool_info(
            policy, "db", {"name": "list_secrets", "annotations": {"readOnlyHint": True}}
        )
        assert (info.kind, info.risk) == ("read", "high")


def _file(pinned: dict[tuple[str, str], str]) -> Pins:
    """The pins file as read: its pins, and a digest of its text."""
    return Pins(pinned=pinned, source=str(sorted(pinned.items())))


class TestPins:
    def test_digest_covers_the_definition_only(self) -> None:
        tool = {"name": "echo", "description": "Echoes", "inputSchema": {"type": "object"}}
        noisy = {**tool, "title": None, "annotations": {"readOnlyHint": None}, "_meta": {}}
        assert tool_digest(tool) == tool_digest({**noisy, "_meta": {"io.celgate/risk": "x"}})
        assert tool_digest(tool) != tool_digest({**tool, "_meta": {"x": 1}})  # a server's own
        assert tool_digest(tool) != tool_digest({**tool, "description": "Echoes!"})

    def test_changed_tool_is_refused_until_repinned(self, tmp_path: Path) -> None:
        pins = Pins(tmp_path / "pins.yaml")
        v1 = {"name": "echo", "description": "one"}
        v2 = {"name": "echo", "description": "two"}
        assert pins.observe("up", v1) == "new"
        assert pins.refusal("up", "echo") is None
        assert pins.observe("up", v2) == "changed"
        why = pins.refusal("up", "echo")
        assert why is not None and "changed since it was pinned" in why
        pins.repinned(_file({("up", "echo"): tool_digest(v2)}))  # `celgate pins update`
        assert pins.refusal("up", "echo") is None
        assert pins.observe("up", v2) == "same"

    def test_showing_the_pinned_definition_again_does_not_reopen(self) -> None:
        pins = Pins(None)
        v1 = {"name": "echo", "description": "one"}
        v2 = {"name": "echo", "description": "two"}
        pins.observe("up", v1)
        assert pins.observe("up", v2) == "changed"
        assert pins.observe("up", v1) == "changed"
        assert pins.refusal("up", "echo") is not None
        pins.repinned(_file({("up", "add"): "sha256:other"}))  # another tool's pin: refused
        assert pins.refusal("up", "echo") is not None
        pinned_again = _file({("up", "echo"): tool_digest(v1)})
        pins.repinned(pinned_again)  # the operator pins what is shown now
        assert pins.refusal("up", "echo") is None
        pins.observe("up", v2)
        pins.observe("up", v1)  # changed, then reverted
        pins.repinned(pinned_again)  # the same file read again (a reload of the rules)
        assert pins.refusal("up", "echo") is not None

    def test_pins_held_in_memory_are_bounded_per_server(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A server that renames its tools on every list cannot grow them without bound; a
        pin already held is never let go (its changes are still refused). Past the bound a
        tool with no pin is refused: it could not be pinned, so its changes ran unseen (20,000
        junk names, then a real tool, red-team wave 42)."""
        monkeypatch.setattr(pins_module, "MAX_FIRST_SEEN", 2)
        pins = Pins(None)
        v1, v2 = {"name": "echo", "description": "one"}, {"name": "echo", "description": "two"}
        assert pins.observe("up", v1) == "new"
        for n in range(5):
            pins.observe("up", {"name": f"t{n}"})
        assert len(pins.pinned) == 2
        assert pins.refusal("up", "t0") is None  # pinned before the bound
        assert "no pin" in str(pins.refusal("up", "t1")) and pins.refusal("up", "deploy")
        assert pins.observe("up", v2) == "changed" and pins.refusal("up", "echo") is not None
        assert pins.observe("other", v1) == "new" and ("other", "echo") in pins.pinned
        assert pins.refusal("other", "echo") is None

    def test_a_pin_read_again_is_checked_against_what_was_last_seen(self) -> None:
        """The pins file rolled back to the reviewed definition while the server shows
        another: refused at once, not after some caller lists tools (red-team wave 35);
        pinning what it shows opens it again."""
        v0 = {"name": "echo", "description": "reviewed"}
        v1 = {"name": "echo", "description": "unreviewed"}
        pins = Pins(None)
        assert pins.observe("up", v1) == "new" and pins.refusal("up", "echo") is None
        pins.repinned(Pins(None, pinned={("up", "echo"): tool_digest(v0)}, source="a"))
        assert pins.refusal("up", "echo") is not None
        pins.repinned(Pins(None, pinned={("up", "echo"): tool_digest(v1)}, source="b"))
        assert pins.refusal("up", "echo") is None
        pins.repinned(Pins(None, pinned={("other", "echo"): tool_digest(v0)}, source="c"))
        assert pins.refusal("other", "echo") is None  # never seen: the next listing checks it

    def test_a_pin_ahead_of_the_server_opens_once_the_server_shows_it(self) -> None:
        """Upgraded, then pinned before anyone listed it (a stdio server's running process
        still shows the old one): the tool stayed refused after the server showed the pin,
        until a second ``pins update`` (red-team wave 36). Only the pin ever opens it."""
        v1 = {"name": "echo", "description": "one"}
        v2 = {"name": "echo", "description": "two"}
        pins = Pins(None)
        pins.observe("up", v1)
        pins.repinned(Pins(None, pinned={("up", "echo"): tool_digest(v2)}, source="a"))
        refused = pins.refusal("up", "echo")
        assert refused is not None and "is not the one pinned" in refused
        assert pins.observe("up", v1) == "changed"  # the old process, listed again
        assert pins.observe("up", {**v1, "description": "three"}) == "changed"
        assert pins.refusal("up", "echo") is not None  # another definition: a change
        assert pins.observe("up", v2) == "changed"  # ... which the pin showing does not end
        pins = Pins(None)
        pins.observe("up", v1)
        pins.repinned(Pins(None, pinned={("up", "echo"): tool_digest(v2)}, source="b"))
        pins.observe("up", v1)
        assert pins.observe("up", v2) == "same" and pins.refusal("up", "echo") is None

    def test_accepting_changes_is_a_setting(self) -> None:
        pins = Pins(None, accept_changes=True)
        pins.observe("up", {"name": "echo", "description": "one"})
        pins.observe("up", {"name": "echo", "description": "two"})
        assert pins.refusal("up", "echo") is None


POLICY = """\
version: "1"
default: deny
tools:
  query:
    rules:
      - id: reads
        when: 'args.sql.startsWith("select")'
        action: allow
"""


class TestPolicyTests:
    def test_passing_and_failing_cases(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "policy_test.yaml").write_text(
            "cases:\n"
            "  - name: select passes\n"
            "    tool: query\n"
            "    args: {sql: select 1}\n"
            "    expect: {effect: allow, rule: reads}\n"
            "  - name: wrong expectation\n"
            "    tool: query\n"
            "    args: {sql: drop table t}\n"
            "    expect: {effect: allow}\n"
        )
        assert main(["test", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert f"FAIL {tmp_path / 'policy_test.yaml'}:6: wrong expectation: expected effect" in out
        assert "1 passed, 1 failed" in out

    def test_a_test_file_that_does_not_load_counts_one_failure(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """It printed "-1 passed, 1 failed"."""
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "broken_test.yaml").write_text("cases: [{tool: x, expect: {colour: red}}]\n")
        assert main(["test", str(tmp_path)]) == 1
        assert "FAILED: 0 passed, 1 failed, in 1 file(s)" in capsys.readouterr().out

    def test_a_broken_case_is_one_failure_and_the_others_still_run(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One case's typo counted the whole file as one failure: a real regression beside
        it was neither run nor named (red-team wave 37)."""
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "policy_test.yaml").write_text(
            "cases:\n"
            "  - {name: typo, tool: query, expect: {efect: deny}}\n"
            "  - {name: regression, tool: query, args: {sql: drop t}, expect: {effect: allow}}\n"
            "  - {name: fine, tool: query, args: {sql: select 1}, expect: {effect: allow}}\n"
        )
        assert main(["test", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert "cases[0].expect.efect: unknown field" in out
        assert "regression: expected effect 'allow'" in out
        assert "FAILED: 1 passed, 2 failed, in 1 file(s)" in out

    def test_all_passing_exits_zero(self, tmp_path: Path) -> None:
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "more_test.yaml").write_text(
            "cases:\n  - {tool: other, expect: {effect: deny, rule: default}}\n"
        )
        assert main(["test", str(tmp_path)]) == 0

    def test_a_json_test_file_is_a_test_not_a_rule_file(self, tmp_path: Path) -> None:
        """The docs name ``.json`` test files: one was read as a rule file instead, and the
        whole folder failed to load (the gateway refused to start, and every reload)."""
        (tmp_path / "policy.yaml").write_text(POLICY)
        cases = {"cases": [{"tool": "other", "expect": {"effect": "deny", "rule": "default"}}]}
        (tmp_path / "more_test.json").write_text(json.dumps(cases))
        assert main(["check", str(tmp_path)]) == 0
        assert main(["test", str(tmp_path)]) == 0
        cases["cases"][0]["expect"]["effect"] = "allow"
        (tmp_path / "more_test.json").write_text(json.dumps(cases))
        assert main(["test", str(tmp_path)]) == 1

    def test_bad_test_file_names_the_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "bad_test.yaml").write_text("cases:\n  - tool: query\n    expext: {}\n")
        assert main(["test", str(tmp_path)]) == 1
        assert f"{tmp_path / 'bad_test.yaml'}:3: cases[0].expext: unknown field" in (
            capsys.readouterr().out
        )

    @pytest.mark.parametrize(
        ("line", "said"),
        [
            ("roles: admin", "cases[0].roles: must be a list of names"),
            ("attrs: [team]", "cases[0].attrs: must be a mapping"),
            ("now: monday", "cases[0].now: must be an ISO 8601 time"),
            ("risk: hihg", "cases[0].risk: unknown value 'hihg' (use low | medium | high)"),
            ("kind: reed", "cases[0].kind: unknown value 'reed'"),
        ],
    )
    def test_a_case_field_of_the_wrong_shape_names_its_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, said: str
    ) -> None:
        """roles: admin was read as the roles a, d, m, i, n (the case failed, no hint); a
        time or attrs of the wrong shape ended celgate test in a traceback; a misspelt risk
        or kind matched no rule, unsaid."""
        (tmp_path / "policy.yaml").write_text(POLICY)
        case = f"cases:\n  - tool: query\n    {line}\n    expect: {{effect: deny}}\n"
        (tmp_path / "bad_test.yaml").write_text(case)
        assert main(["test", str(tmp_path)]) == 1
        assert f"{tmp_path / 'bad_test.yaml'}:3: {said}" in capsys.readouterr().out

    def test_an_expectation_of_nothing_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``expect: {}`` checked nothing and passed."""
        (tmp_path / "policy.yaml").write_text(POLICY)
        (tmp_path / "empty_test.yaml").write_text("cases:\n  - tool: query\n    expect: {}\n")
        assert main(["test", str(tmp_path)]) == 1
        assert "cases[0].expect: says nothing to check" in capsys.readouterr().out

    def test_decide_says_what_is_wrong_with_its_time_and_risk(self, tmp_path: Path) -> None:
        (tmp_path / "policy.yaml").write_text(POLICY)
        with pytest.raises(SystemExit, match="not an ISO 8601 time"):
            main(["decide", str(tmp_path), "--tool", "query", "--now", "monday"])
        with pytest.raises(SystemExit):  # argparse: invalid choice, said on stderr
            main(["decide", str(tmp_path), "--tool", "query", "--risk", "hihg"])

    def test_a_time_without_offset_is_utc_wherever_the_tests_run(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As the gateway and ``decide --now`` read it: ``celgate test`` took it as the
        machine's local time, so one test file passed in CI and failed on a laptop in
        New York (red-team wave 35)."""
        (tmp_path / "policy.yaml").write_text(
            "version: '1'\ndefault: deny\ntools:\n  query:\n    rules:\n"
            "      - {id: office, when: 'now.getHours() >= 9 && now.getHours() < 17',"
            " action: allow}\n"
        )
        case = '  - {{tool: query, now: "2026-01-05T{at}", expect: {{effect: {effect}}}}}\n'
        (tmp_path / "hours_test.yaml").write_text(
            "cases:\n"
            + case.format(at="08:30:00", effect="deny")
            + case.format(at="16:30:00", effect="allow")
        )
        try:
            for zone in ("America/New_York", "Asia/Tokyo", "UTC"):
                monkeypatch.setenv("TZ", zone)
                time.tzset()
                assert main(["test", str(tmp_path)]) == 0, zone
        finally:
            monkeypatch.undo()
            time.tzset()

    def test_shipped_rules_pass_their_tests(self) -> None:
        rules = Path(__file__).resolve().parent.parent / "rules"
        assert main(["test", str(rules)]) == 0


class TestCatalogCommand:
    def test_lists_demo_tools_with_kind_risk_and_effect(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        rules = Path(__file__).resolve().parent.parent / "rules" / "demo.yaml"
        with demo_server() as demo:
            config = tmp_path / "celgate.yaml"
            servers = f"servers:\n  demo: {{url: '{demo.url}'}}\n"
            config.write_text(f"policy: {rules}\n{servers}anonymous: true\n")
            assert main(["catalog", "--config", str(config), "--json"]) == 0
        rows = {r["tool"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["delete_note"] == {
            "server": "demo",
            "tool": "delete_note",
            "kind": "delete",
            "risk": "high",
            "why": "annotation destructiveHint",
            "effect": "require_approval",
        }
        assert (rows["list_notes"]["kind"], rows["list_notes"]["effect"]) == ("read", "allow")
        assert rows["run_report"]["effect"] == "conditional"  # allowed for some arguments only


def test_the_catalog_table_shows_control_characters_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An upstream names its tools: a name with escape sequences or a line break must not
    clear the operator's screen or forge a row of the table."""
    from gateway.cli.catalog import _print_table

    name = "echo\x1b[2J\x1b]0;PWNED\x07\r\nx  delete_everything  read  low  allow"
    _print_table([{"server": "up", "tool": name, "kind": "read", "risk": "low", "effect": "allow"}])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert len(out.splitlines()) == 2 and "\\x1b[2J" in out
