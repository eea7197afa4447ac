"""Load errors: each names ``file:line`` and the field; all are reported in one ConfigError;
nothing half-loads."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy import load_policy

Run = Callable[..., list[str]]


def _write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return name


def _errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *paths: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_policy(list(paths))
    return [str(p) for p in info.value.problems]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    def go(text: str, name: str = "r.yaml") -> list[str]:
        _write(tmp_path, name, text)
        return _errors(tmp_path, monkeypatch, name)

    return go


class TestFields:
    """Unknown fields, wrong types and unknown choices, each at its own line."""

    def test_unknown_fields_at_every_level(self, run: Run) -> None:
        errors = run(
            """
            version: "1"
            defualt: deny
            tools:
              t:
                actoin: allow
                rules:
                  - {id: a, when: 'true', action: allow, wen: x}
                limits:
                  - {counter: c, window: minute, max: 1, scpoe: grant}
            """
        )
        assert errors == [
            "r.yaml:2: defualt: unknown field (did you mean 'default'?)",
            "r.yaml:5: tools.t.actoin: unknown field (did you mean 'action'?)",
            "r.yaml:7: tools.t.rules[0].wen: unknown field (did you mean 'when'?)",
            "r.yaml:9: tools.t.limits[0].scpoe: unknown field (did you mean 'scope'?)",
        ]

    def test_an_empty_list_is_refused(self, run: Run) -> None:
        """``delete_note: {rules: []}`` (a placeholder) beside ``"*"`` holding every call
        decided as ``{}``: allowed, no conditions (red-team wave 63)."""
        errors = run(
            """
            tools:
              "*": {action: require_approval}
              delete_note: {rules: []}
              purge_notes: {limits: []}
              wipe_notes: {secret_args: []}
            """
        )
        told = "an empty list: remove it (write {} for allowed, no conditions)"
        assert errors == [
            f"r.yaml:3: tools.delete_note.rules: {told}",
            f"r.yaml:4: tools.purge_notes.limits: {told}",
            f"r.yaml:5: tools.wipe_notes.secret_args: {told}",
        ]

    def test_wrong_types(self, run: Run) -> None:
        errors = run(
            """
            tools:
              a:
                rules: {id: x}
              b:
                limits:
                  - {counter: c, window: minute, max: "ten"}
              c:
                rules:
                  - {when: 42, action: allow}
              d: [allow]
            """
        )
        assert errors == [
            "r.yaml:3: tools.a.rules: must be a list of rules",
            "r.yaml:6: tools.b.limits[0].max: must be a positive integer, not 'ten'",
            "r.yaml:9: tools.c.rules[0].when: must be a CEL expression (a string)",
            "r.yaml:10: tools.d: must be a mapping, not list",
        ]

    def test_unknown_action_scope_window(self, run: Run) -> None:
        errors = run(
            """
            default: maybe
            tools:
              t:
                action: permit
                limits:
                  - counter: c
                    window: fortnight
                    max: 5
                    scope: planet
            """
        )
        assert errors == [
            "r.yaml:1: default: unknown value 'maybe' (use allow | deny)",
            "r.yaml:4: tools.t.action: unknown value 'permit' "
            "(use allow | deny | require_approval)",
            "r.yaml:7: tools.t.limits[0].window: unknown window 'fortnight' "
            "(use second|minute|hour|day or seconds > 0)",
            "r.yaml:9: tools.t.limits[0].scope: unknown value 'planet' "
            "(use grant | agent | session | tool | global)",
        ]

    def test_rule_without_action_and_bad_approval(self, run: Run) -> None:
        errors = run(
            """
            tools:
              t:
                approval: {mode: later}
                rules:
                  - id: r
                    when: 'true'
            """
        )
        assert errors == [
            "r.yaml:3: tools.t.approval.mode: unknown value 'later' (use wait | retry | elicit)",
            "r.yaml:5: tools.t.rules[0].action: a rule needs an action",
        ]

    def test_negative_window_and_zero_max(self, run: Run) -> None:
        errors = run("tools:\n  t:\n    limits:\n      - {counter: c, window: -5, max: 0}\n")
        assert errors == [
            "r.yaml:4: tools.t.limits[0].max: must be a positive integer, not 0",
            "r.yaml:4: tools.t.limits[0].window: unknown window -5 "
            "(use second|minute|hour|day or seconds > 0)",
        ]


class TestCel:
    """CEL is compiled at load: parse errors, unknown variables and functions are load errors."""

    def test_parse_error_single_line(self, run: Run) -> None:
        errors = run("tools:\n  t:\n    rules:\n      - {when: 'args.a == )', action: allow}\n")
        assert len(errors) == 1
        assert errors[0].startswith("r.yaml:4: tools.t.rules[0].when: CEL: does not parse")

    def test_parse_error_inside_folded_block(self, run: Run) -> None:
        errors = run(
            """
            tools:
              t:
                rules:
                  - id: multi
                    when: >-
                      args.a == 1
                      && args.b == 2
                      && args.c == )
                      && args.d == 4
                    action: allow
            """
        )
        assert len(errors) == 1
        assert errors[0].startswith("r.yaml:8: tools.t.rules[0].when: CEL: does not parse")

    def test_parse_error_inside_literal_block(self, run: Run) -> None:
        errors = run(
            """
            tools:
              t:
                rules:
                  - when: |
                      args.a == 1 &&
                      args.b == ) &&
                      args.c == 3
                    action: allow
            """
        )
        assert len(errors) == 1
        assert errors[0].startswith("r.yaml:6: tools.t.rules[0].when: CEL: does not parse")

    def test_undeclared_variable(self, run: Run) -> None:
        errors = run(
            "tools:\n  t:\n    rules:\n      - {when: 'user.name == \"x\"', action: allow}\n"
        )
        assert errors == [
            "r.yaml:4: tools.t.rules[0].when: CEL: undeclared variable 'user' "
            "(declared: agent, args, now, request, session, tool)"
        ]

    @pytest.mark.parametrize(
        ("when", "name"),
        [
            ('has(.args.cmd) && .args.cmd == "rm"', "args"),
            ("!has(.args.safe)", "args"),
            ('.agent.id == "x" && args.a == 1', "agent"),
            ("has(.bogus.x)", "bogus"),
            (".size(args) > 0", "size"),
        ],
    )
    def test_a_name_with_a_leading_dot(self, run: Run, when: str, name: str) -> None:
        """CEL's root-scoped ``.args`` loaded and was never bound: ``has(.args.cmd)`` was
        false on every call, so a deny it guarded never applied (red-team wave 54)."""
        errors = run(f"tools:\n  t:\n    rules:\n      - {{when: '{when}', action: deny}}\n")
        assert errors == [
            f"r.yaml:4: tools.t.rules[0].when: CEL: a name with a leading dot ('.{name}'): "
            f"write {name!r}"
        ]

    @pytest.mark.parametrize(
        ("when", "said"),
        [
            ('"admin" in agent.rolez', "agent has no field 'rolez'"),
            ('tool.nmae == "x"', "tool has no field 'nmae'"),
            ('request.tiem < "2026"', "request has no field 'tiem'"),
            ("has(session.idd)", "session has no field 'idd'"),
        ],
    )
    def test_a_field_the_context_has_not(self, run: Run, when: str, said: str) -> None:
        """A misspelled field of a fixed map loaded, and the condition failed on every call
        (cel.missing_key): the tool hidden from every list and every call denied."""
        errors = run(f"tools:\n  t:\n    rules:\n      - {{when: '{when}', action: allow}}\n")
        assert len(errors) == 1 and errors[0].startswith("r.yaml:4: tools.t.rules[0].when: CEL:")
        assert said in errors[0] and "its fields:" in errors[0]

    def test_open_maps_and_macro_variables_take_any_field(self, tmp_path: Path) -> None:
        path = tmp_path / "ok.yaml"
        path.write_text(
            'tools:\n  t:\n    rules:\n      - {when: \'agent.attrs.team == "a" && '
            'agent.claims.acr == "mfa" && tool.annotations.readOnlyHint && '
            "args.l.all(tool, tool.anything > 0) && args.whatever == 1', action: allow}\n"
        )
        assert load_policy([path]).exact[(None, "t")].rules[0].when is not None

    def test_macro_variables_are_not_undeclared(self, tmp_path: Path) -> None:
        path = tmp_path / "ok.yaml"
        path.write_text(
            "tools:\n  t:\n    rules:\n      - {when: 'args.l.all(x, x > 0)', action: allow}\n"
        )
        assert load_policy([path]).exact[(None, "t")].rules[0].when is not None

    def test_unknown_function(self, run: Run) -> None:
        errors = run("tools:\n  t:\n    rules:\n      - {when: 'args.s.shout()', action: allow}\n")
        assert errors == ["r.yaml:4: tools.t.rules[0].when: CEL: unknown function 'shout'"]


class TestSyntax:
    def test_duplicate_yaml_keys(self, run: Run) -> None:
        errors = run("tools:\n  t:\n    action: allow\n    action: deny\n")
        assert errors == ["r.yaml:4: tools.t.action: duplicate key (first at line 3)"]

    def test_duplicate_tool_keys_in_one_file(self, run: Run) -> None:
        errors = run("tools:\n  t: {action: allow}\n  u: {}\n  t: {action: deny}\n")
        assert errors == ["r.yaml:4: tools.t: duplicate key (first at line 2)"]

    def test_json_syntax_error(self, run: Run) -> None:
        errors = run(
            '{\n  "default": "deny",\n  "tools": {\n    "t": {"action": "allow",}\n  }\n}\n',
            "p.json",
        )
        assert len(errors) == 1
        assert errors[0].startswith("p.json:4: invalid JSON:")

    def test_yaml_syntax_error(self, run: Run) -> None:
        errors = run("tools:\n  t: {action: allow\n  u: x\n")
        assert len(errors) == 1 and errors[0].startswith("r.yaml:")
        assert "syntax error" in errors[0]


class TestAcrossFiles:
    """A folder is one policy: clashes between files name both places."""

    def test_tool_defined_twice(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write(tmp_path, "a.yaml", "tools:\n  t: {action: allow}\n")
        _write(tmp_path, "b.yaml", "default: deny\ntools:\n  u: {}\n  t: {action: deny}\n")
        errors = _errors(tmp_path, monkeypatch, "a.yaml", "b.yaml")
        assert errors == ["b.yaml:4: tools.t: defined twice: here and at a.yaml:2"]

    def test_contradicting_defaults(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write(tmp_path, "a.yaml", "default: deny\n")
        _write(tmp_path, "b.yaml", "# allow everything\ndefault: allow\n")
        errors = _errors(tmp_path, monkeypatch, "a.yaml", "b.yaml")
        assert errors == ["b.yaml:2: default: 'allow' contradicts 'deny' set at a.yaml:1"]

    def test_equal_defaults_agree(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text("default: allow\n")
        (tmp_path / "b.yaml").write_text("default: allow\n")
        assert load_policy([tmp_path]).default == "allow"

    def test_glob_tie(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write(tmp_path, "a.yaml", 'tools:\n  "get_*": {action: allow}\n')
        _write(tmp_path, "b.yaml", 'tools:\n  "*_all": {action: deny}\n')
        errors = _errors(tmp_path, monkeypatch, "a.yaml", "b.yaml")
        assert errors == [
            "a.yaml:2: tools.get_*: ties with '*_all' at b.yaml:2: "
            "equally specific globs that overlap"
        ]

    def test_disjoint_globs_do_not_tie(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text('tools:\n  "get_*": {action: allow}\n  "put_*": {}\n')
        assert len(load_policy([tmp_path / "a.yaml"]).globs) == 2

    def test_shared_counter_defined_differently(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _write(
            tmp_path, "a.yaml", "tools:\n  t:\n    limits: [{counter: w, window: minute, max: 5}]\n"
        )
        _write(
            tmp_path,
            "b.yaml",
            "tools:\n  u:\n    limits:\n      - {counter: w, window: hour, max: 5}\n",
        )
        errors = _errors(tmp_path, monkeypatch, "a.yaml", "b.yaml")
        assert errors == [
            "b.yaml:4: tools.u.limits[0]: counter 'w' is defined differently at a.yaml:3"
        ]

    def test_duplicate_rule_id(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write(tmp_path, "a.yaml", "tools:\n  t:\n    rules: [{id: r, action: allow}]\n")
        _write(tmp_path, "b.yaml", "tools:\n  u:\n    rules:\n      - {id: r, action: deny}\n")
        errors = _errors(tmp_path, monkeypatch, "a.yaml", "b.yaml")
        assert errors == ["b.yaml:4: tools.u.rules[0].id: rule id 'r' also used at a.yaml:3"]


class TestAllTogether:
    """Every problem of every file comes in one ConfigError; a broken policy never loads."""

    def test_all_problems_in_one_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _write(tmp_path, "a.yaml", "default: deny\ntools:\n  t: {action: nope}\n")
        _write(tmp_path, "b.json", '{"default": "allow", "tools": {"t": {}}}\n')
        _write(tmp_path, "c.yaml", "tools:\n  u:\n    rules: [{when: 'foo', action: allow}]\n")
        errors = _errors(tmp_path, monkeypatch, ".")
        assert errors == [
            "a.yaml:3: tools.t.action: unknown value 'nope' (use allow | deny | require_approval)",
            "b.json:1: default: 'allow' contradicts 'deny' set at a.yaml:1",
            "b.json:1: tools.t: defined twice: here and at a.yaml:3",
            "c.yaml:3: tools.u.rules[0].when: CEL: undeclared variable 'foo' "
            "(declared: agent, args, now, request, session, tool)",
        ]

    def test_one_bad_file_rejects_the_folder(self, tmp_path: Path) -> None:
        (tmp_path / "good.yaml").write_text("default: allow\ntools:\n  t: {action: allow}\n")
        (tmp_path / "bad.yaml").write_text("tools:\n  u: {action: allow, extra: 1}\n")
        with pytest.raises(ConfigError) as info:
            load_policy([tmp_path])
        assert len(info.value.problems) == 1
        assert "extra" in str(info.value)

    def test_missing_path_and_empty_folder(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="no such file or folder"):
            load_policy([tmp_path / "absent.yaml"])
        (tmp_path / "empty").mkdir()
        with pytest.raises(ConfigError, match="no rule files given"):
            load_policy([tmp_path / "empty"])

    def test_test_files_and_hidden_files_are_skipped(self, tmp_path: Path) -> None:
        (tmp_path / "rules.yaml").write_text("tools:\n  t: {action: allow}\n")
        (tmp_path / "rules_test.yaml").write_text("not: [a policy\n")
        (tmp_path / ".hidden.yaml").write_text("not: [a policy\n")
        assert load_policy([tmp_path]).sources == (str(tmp_path / "rules.yaml"),)


class TestShadowFiles:
    """A file in shadow mode decides nothing: it cannot set the one default (which would be
    enforced), and its mode is part of the policy's revision."""

    def test_a_shadow_file_cannot_set_the_default(self, run: Run) -> None:
        errors = run(
            """
            mode: shadow
            default: allow
            tools:
              write_file: {action: deny}
            """
        )
        assert errors == [
            "r.yaml:2: default: a file in shadow mode cannot set the default to allow "
            "(it would be enforced)"
        ]

    def test_the_files_mode_changes_the_revision(self, tmp_path: Path) -> None:
        body = 'version: "1"\ntools:\n  echo: {}\n'
        (tmp_path / "enforced.yaml").write_text(body)
        (tmp_path / "shadowed.yaml").write_text("mode: shadow\n" + body)
        enforced = load_policy([str(tmp_path / "enforced.yaml")])
        shadowed = load_policy([str(tmp_path / "shadowed.yaml")])
        assert enforced.revision != shadowed.revision


class TestWhatIsRead:
    """Only a regular file of sane size is read: a FIFO in a rule file's place would hold the
    reader (and the gateway with it); a huge file would hold it parsing."""

    def test_a_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        import os

        fifo = tmp_path / "policy.yaml"
        os.mkfifo(fifo)
        with pytest.raises(ConfigError) as info:
            load_policy([str(fifo)])
        assert "cannot read: not a regular file" in str(info.value)

    def test_a_huge_file_is_refused(self, tmp_path: Path) -> None:
        from gateway.located import MAX_FILE_BYTES

        big = tmp_path / "policy.yaml"
        big.write_text('version: "1"\ndefault: deny\n' + "#" * MAX_FILE_BYTES + "\n")
        with pytest.raises(ConfigError) as info:
            load_policy([str(big)])
        assert f"larger than {MAX_FILE_BYTES} bytes" in str(info.value)
