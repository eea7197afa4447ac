"""Hostile and cut-off rule files: each is refused with one ConfigError naming ``file:line`` and
the field, never another exception (a crash on hot reload would take the gateway down)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy import Call, decide, load_policy
from gateway.policy.visibility import visible

DEEP_CEL = "(" * 3000 + "true" + ")" * 3000
BOMB = "tools:\n  t: {}\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)
)

# (name, file name, content, expected "file:line: field: message" start)
CASES: list[tuple[str, str, str | bytes, str]] = [
    (
        "merge-key",
        "r.yaml",
        "tools:\n  base: &b {action: allow}\n  delete_note:\n    <<: *b\n",
        "r.yaml:4: tools.delete_note: merge keys (<<) are not supported",
    ),
    (
        "binary",
        "r.yaml",
        "tools:\n  t: {reason: !!binary aGVsbG8=}\n",
        "r.yaml:2: tools.t.reason: binary data is not allowed here",
    ),
    (
        "control-character",
        "r.yaml",
        "tools:\n  t: {}\n  u\x07: {}\n",
        "r.yaml:3: character U+0007 is not allowed",
    ),
    (  # written as escapes the reader takes (red-team wave 47): refused all the same
        "escaped-control-character",
        "r.yaml",
        'tools:\n  t: {action: deny, reason: "\\x1b[2J\\x07"}\n',
        "r.yaml:2: tools.t.reason: control character U+001B in a string is not allowed",
    ),
    (
        "escaped-control-character-json",
        "r.json",
        '{"tools": {"t\\u009b": {}}}',
        "r.json:1: tools: control character U+009B in a string is not allowed",
    ),
    (
        "impossible-date-key",
        "r.yaml",
        "tools:\n  t: {}\n  2001-13-45: {}\n",
        "r.yaml:3: tools: cannot read '2001-13-45'",
    ),
    (
        "date-key",
        "r.yaml",
        "tools:\n  2001-01-01: {}\n",
        "r.yaml:2: tools: date is not allowed here (quote it",
    ),
    ("int-key", "r.yaml", "tools:\n  404: {}\n", "r.yaml:2: tools: key '404' must be a string"),
    ("bool-key", "r.yaml", "tools:\n  on: {}\n", "r.yaml:2: tools: key 'on' must be a string"),
    ("null-key", "r.yaml", "tools:\n  ~: {}\n", "r.yaml:2: tools: key '~' must be a string"),
    (
        "collection-key",
        "r.yaml",
        "tools:\n  ? [a, b]\n  : {}\n",
        "r.yaml:2: tools: a key must be a string, not a collection",
    ),
    (
        "python-object",
        "r.yaml",
        "tools:\n  t: !!python/object:os.system {}\n",
        "r.yaml:2: tools.t: unsupported tag 'tag:yaml.org,2002:python/object:os.system'",
    ),
    (
        "python-name",
        "r.yaml",
        "tools:\n  t: {reason: !!python/name:os.system ''}\n",
        "r.yaml:2: tools.t.reason: cannot read ''",
    ),
    (
        "set",
        "r.yaml",
        "tools:\n  t:\n    rules: !!set {a, b}\n",
        "r.yaml:3: tools.t.rules: unsupported tag 'tag:yaml.org,2002:set'",
    ),
    (
        "omap",
        "r.yaml",
        "tools:\n  t:\n    rules: !!omap [{a: 1}]\n",
        "r.yaml:3: tools.t.rules: unsupported tag 'tag:yaml.org,2002:omap'",
    ),
    (
        "timestamp-value",
        "r.yaml",
        "tools:\n  t:\n    reason: !!timestamp 2020-01-01T00:00:00Z\n",
        "r.yaml:3: tools.t.reason: datetime is not allowed here",
    ),
    (
        "local-tag",
        "r.yaml",
        "tools:\n  t: {reason: !secret x}\n",
        "r.yaml:2: tools.t.reason: cannot read 'x'",
    ),
    (
        "deep-flow-nesting",
        "r.yaml",
        "tools:\n  t:\n    description: " + "[" * 3000 + "]" * 3000 + "\n",
        "r.yaml:3: syntax error: nested deeper than 64 levels",
    ),
    (
        "deep-block-nesting",
        "r.yaml",
        "tools:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)),
        "r.yaml:64: syntax error: nested deeper than 64 levels",
    ),
    (
        "recursive-alias",
        "r.yaml",
        "tools:\n  t: {}\nx: &a [*a]\n",
        "r.yaml:3: x",
    ),
    ("alias-bomb", "r.yaml", BOMB, "r.yaml:"),
    (
        "deep-json",
        "r.json",
        '{"tools": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "r.json:1: invalid JSON: nested too deeply",
    ),
    (
        "huge-json-number",
        "r.json",
        '{"tools": {"t": {"reason": ' + "9" * 5000 + "}}}",
        "r.json:1: invalid JSON: Exceeds the limit",
    ),
    (
        "not-utf8",
        "r.yaml",
        b"tools:\n  t: {reason: \xff\xfe}\n",
        "r.yaml:1: cannot read: 'utf-8' codec can't decode",
    ),
    (
        "deep-cel",
        "r.yaml",
        f"tools:\n  t:\n    rules:\n      - {{when: '{DEEP_CEL}', action: allow}}\n",
        "r.yaml:4: tools.t.rules[0].when: CEL: brackets nested 3000 deep (at most 32)",
    ),
    (
        "deep-cel-unary",
        "r.yaml",
        "tools:\n  t:\n    rules:\n      - {when: '" + "!" * 3000 + "true', action: allow}\n",
        "r.yaml:4: tools.t.rules[0].when: CEL: expression is nested too deeply",
    ),
    (
        "long-cel",
        "r.yaml",
        "tools:\n  t:\n    rules:\n      - {when: '" + " || ".join(["true"] * 3000) + "', "
        "action: allow}\n",
        "r.yaml:4: tools.t.rules[0].when: CEL: expression is 23996 characters long",
    ),
    (
        "bad-regex-literal",
        "r.yaml",
        "tools:\n  t:\n    rules:\n      - {when: 'args.q.matches(\"a(\")', action: deny}\n",
        "r.yaml:4: tools.t.rules[0].when: CEL: matches(): bad regular expression 'a('",
    ),
    (
        "constant-type-error",
        "r.yaml",
        "tools:\n  t:\n    rules:\n      - {when: 'args.n > 1 && 1 + \"a\" == 2', action: deny}\n",
        """r.yaml:4: tools.t.rules[0].when: CEL: `1 + "a" == 2` always fails (cel.type_error)""",
    ),
    (
        "cut-after-entry-key",
        "r.yaml",
        "default: deny\ntools:\n  read_note: {}\n  delete_note:\n",
        "r.yaml:4: tools.delete_note: entry has no body; write {} for allowed with no conditions",
    ),
    (
        "cut-in-flow",
        "r.yaml",
        "default: deny\ntools:\n  delete_note: {action: de",
        "r.yaml:3: syntax error",
    ),
    ("empty-file", "r.yaml", "", "r.yaml:1: no `tools` and no `default`"),
    (
        "comments-only",
        "r.yaml",
        "# rules\n# to come\n",
        "r.yaml:1: no `tools` and no `default`",
    ),
    ("version-only", "r.yaml", 'version: "1"\n', "r.yaml:1: no `tools` and no `default`"),
    (
        "long-key",
        "r.yaml",
        "tools:\n  " + "a*" * 150 + ": {}\n",
        "r.yaml:2: tools." + "a*" * 150 + ": a key is at most 200 characters",
    ),
    *(
        (
            f"unseen-key-{label}",
            "r.json",
            json.dumps({"default": "allow", "tools": {key: {"action": "deny"}}}),
            f"r.json:1: tools.{key}: a key holds a character that draws nothing",
        )
        for label, key in [
            ("zero-width", "rm\u200b"),
            ("nbsp", "rm\u00a0"),
            ("bidi", "rm\u202e"),
            ("bom", "\ufeffrm"),
            ("trailing-space", "rm "),
            ("server-space", "srv /rm"),
            ("tool-space", "srv/ rm"),
        ]
    ),
]


class TestHostileFiles:
    """Every hostile input is one located ConfigError and nothing else."""

    @pytest.mark.parametrize(
        ("name", "content", "expected"),
        [(f, c, e) for _, f, c, e in CASES],
        ids=[case[0] for case in CASES],
    )
    def test_refused_with_location(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        name: str,
        content: str | bytes,
        expected: str,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_policy([name])
        problems = [str(p) for p in info.value.problems]
        assert any(p.startswith(expected) for p in problems), problems


class TestEmptyAndNull:
    """``{}`` means allowed; a folder whose only file is empty is refused, as is an empty file
    beside others (a file cut to nothing must not quietly drop its rules)."""

    def test_empty_mapping_entry_still_allows(self, tmp_path: Path) -> None:
        path = tmp_path / "r.yaml"
        path.write_text("default: deny\ntools:\n  ping: {}\n", encoding="utf-8")
        policy = load_policy([path])
        assert [e.key for e in policy.entries] == ["ping"]

    def test_seed_policy_loads_verbatim(self) -> None:
        seed = Path(__file__).parent.parent / "rules" / "seed-policy.json"
        policy = load_policy([seed])
        [entry] = policy.entries
        assert entry.key == "CreateCodeConnection" and entry.action is None
        assert [lim.counter for lim in entry.limits] == ["createcodeconnection_rate"]

    def test_empty_file_in_a_folder(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text("tools:\n  '*': {action: allow}\n", encoding="utf-8")
        (tmp_path / "b.yaml").write_text("", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_policy([tmp_path])
        assert [str(p) for p in info.value.problems] == [
            f"{tmp_path / 'b.yaml'}:1: no `tools` and no `default`: an empty or cut-off rule "
            "file is refused (write `tools: {}` for a file that is meant to be empty)"
        ]

    def test_hidden_temp_files_are_ignored(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text("tools:\n  t: {}\n", encoding="utf-8")
        (tmp_path / ".a.yaml.tmp").write_text("tools:\n  t:\n", encoding="utf-8")
        (tmp_path / ".b.yaml").write_text("tools:\n  t:\n", encoding="utf-8")
        assert [e.key for e in load_policy([tmp_path]).entries] == ["t"]


class TestWhatAgentsSee:
    """Rule labels are relative to the policy root; evaluation errors show their code only."""

    def test_label_relative_to_folder(self, tmp_path: Path) -> None:
        (tmp_path / "sub").mkdir()
        rules = "tools:\n  t:\n    action: deny\n"
        (tmp_path / "sub" / "demo.yaml").write_text(rules, encoding="utf-8")
        decision = decide(load_policy([tmp_path]), Call(tool="t"))
        assert decision.rule == "sub/demo.yaml:2"
        decision = decide(load_policy([tmp_path / "sub" / "demo.yaml"]), Call(tool="t"))
        assert decision.rule == "demo.yaml:2"

    def test_eval_error_reason_has_code_not_detail(self, tmp_path: Path) -> None:
        rules = "tools:\n  t:\n    rules:\n      - {when: 'args.n > 1', action: allow}\n"
        (tmp_path / "r.yaml").write_text(rules, encoding="utf-8")
        decision = decide(load_policy([tmp_path]), Call(tool="t", args={"n": "x"}))
        assert decision.reason == (
            "policy condition r.yaml:4 could not be evaluated (cel.type_error); denied"
        )
        assert "0x" not in decision.reason and "Type" not in decision.reason
        detail = getattr(decision, "error_detail", None)
        assert detail and decision.to_dict()["error_detail"] == detail

    @pytest.mark.parametrize("mode", ["enforce", "shadow"])
    def test_an_engine_message_is_kept_cut(self, tmp_path: Path, mode: str) -> None:
        """The engine writes the operand into its message: an argument of 4 MB where a rule
        wanted a string made every record, log line and kept record (500 of them) 4 MB."""
        rule = f"{{when: 'args.sql.matches(\"x\")', action: deny, mode: {mode}}}"
        rules = f"tools:\n  t:\n    rules:\n      - {rule}\n    action: allow\n"
        (tmp_path / "r.yaml").write_text(rules, encoding="utf-8")
        huge = {"sql": {"k": "x" * 1_000_000}}
        decision = decide(load_policy([tmp_path]), Call(tool="t", args=huge))
        assert len(str(decision.to_dict())) < 5000  # a shadow rule keeps its code alone
        if mode == "enforce":
            detail = decision.error_detail
            assert detail is not None and len(detail) < 600 and "[cut:" in detail

    def test_failing_fixed_condition_hides_the_tool(self, tmp_path: Path) -> None:
        rules = (
            "tools:\n  t:\n    rules:\n      - {when: 'agent.attrs.team == \"x\"', action: allow}\n"
        )
        (tmp_path / "r.yaml").write_text("default: allow\n" + rules, encoding="utf-8")
        policy = load_policy([tmp_path])
        assert decide(policy, Call(tool="t")).effect == "deny"
        assert not visible(policy, Call(tool="t"))
