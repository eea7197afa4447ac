"""``celgate check`` and ``celgate decide``, in process and once through the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import main
from gateway.policy import rule_files

RULES = Path(__file__).resolve().parent.parent / "rules"

_GOOD = """\
default: deny
tools:
  execute_query:
    rules:
      - id: read-only
        when: 'args.sql.startsWith("select")'
        action: allow
      - {id: writes, action: deny, reason: read-only}
    limits:
      - {counter: q, window: minute, max: 10, scope: agent}
  "delete_*": {action: require_approval, approval: {mode: retry}}
"""

_BAD = """\
default: deny
tools:
  t:
    actoin: allow
    rules:
      - {when: 'nope == 1', action: allow}
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(_GOOD)
    return path


class TestCheck:
    def test_ok_prints_one_line_summary(
        self, good: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["check", str(good)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1
        assert out[0].startswith("ok: 1 file(s), 2 tool entries, 2 rules, 1 limits, default deny")

    def test_errors_listed_with_file_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(_BAD)
        assert main(["check", str(bad)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert lines[0] == f"{bad}:4: tools.t.actoin: unknown field (did you mean 'action'?)"
        assert lines[1].startswith(
            f"{bad}:6: tools.t.rules[0].when: CEL: undeclared variable 'nope'"
        )
        assert lines[2] == "2 error(s); policy rejected"

    def test_several_paths(self, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check", str(good), str(RULES / "seed-policy.json")]) == 0
        assert "ok: 2 file(s), 3 tool entries" in capsys.readouterr().out


class TestDecide:
    def _decide(self, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
        assert main(["decide", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    def test_allow_with_limits(self, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = self._decide(
            capsys,
            str(good),
            "--tool",
            "execute_query",
            "--args",
            '{"sql": "select 1"}',
            "--grant",
            "key-1",
            "--agent",
            "bot",
        )
        assert out["effect"] == "allow" and out["rule"] == "read-only"
        assert out["limits"] == [
            {
                "counter": "q",
                "scope": "agent",
                "key": "q|agent=key-1/bot",
                "max": 10,
                "window": 60.0,
                "failure_mode": "closed",
            }
        ]

    def test_deny_with_reason(self, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = self._decide(
            capsys, str(good), "--tool", "execute_query", "--args", '{"sql": "drop"}'
        )
        assert (out["effect"], out["rule"], out["reason"]) == ("deny", "writes", "read-only")
        assert out["limits"] == []

    @pytest.mark.parametrize(
        ("args", "said"), [('{"n": ' + "9" * 5000 + "}", "digits"), ("[" * 5000, "deeply")]
    )
    def test_arguments_json_cannot_read_is_one_line(self, good: Path, args: str, said: str) -> None:
        """A 5,000-digit number or lists 5,000 deep ended ``decide`` with a traceback."""
        with pytest.raises(SystemExit) as caught:
            main(["decide", str(good), "--tool", "execute_query", "--args", args])
        assert "--args cannot be read" in str(caught.value) and said in str(caught.value)

    def test_approval_mode(self, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = self._decide(capsys, str(good), "--tool", "delete_x")
        assert out["effect"] == "require_approval"
        assert out["approval"] == {"mode": "retry", "timeout": 300.0}

    def test_eval_error(self, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = self._decide(capsys, str(good), "--tool", "execute_query", "--args", "{}")
        assert (out["effect"], out["error"]) == ("deny", "cel.missing_key")
        assert out["expression"] == 'args.sql.startsWith("select")'

    def test_now_roles_and_attrs(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "t.yaml"
        path.write_text(
            "tools:\n  t:\n    rules:\n      - id: r\n        when: >-\n"
            '          now.getHours() == 22 && "ops" in agent.roles && agent.attrs.team == "x"'
            ' && tool.risk == "high"\n        action: allow\n'
        )
        argv = [
            str(path),
            "--tool",
            "t",
            "--roles",
            "dev,ops",
            "--attrs",
            '{"team": "x"}',
            "--risk",
            "high",
            "--now",
            "2026-03-14T22:05:00+00:00",
        ]
        assert self._decide(capsys, *argv)["rule"] == "r"

    def test_bad_args_json(self, good: Path) -> None:
        with pytest.raises(SystemExit, match="--args is not valid JSON"):
            main(["decide", str(good), "--tool", "t", "--args", "{nope"])
        with pytest.raises(SystemExit, match="--args must be a JSON object"):
            main(["decide", str(good), "--tool", "t", "--args", "[1]"])

    def test_a_time_past_year_9999_in_utc_is_refused(self, good: Path) -> None:
        """It failed with ``OverflowError`` from deep in the decision (red-team wave 63)."""
        with pytest.raises(SystemExit, match="years 1 to 9999 in UTC"):
            main(["decide", str(good), "--tool", "t", "--now", "9999-12-31T23:59:59-10:00"])

    def test_bad_policy(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(_BAD)
        assert main(["decide", str(bad), "--tool", "t"]) == 1
        assert f"{bad}:4: tools.t.actoin" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"celgate {__version__}"


class TestConsoleScript:
    """The installed ``celgate`` entry point, as an operator runs it."""

    @pytest.fixture
    def celgate(self) -> str:
        found = shutil.which("celgate") or str(Path(sys.executable).parent / "celgate")
        if not Path(found).exists():
            pytest.skip("celgate console script not installed")
        return found

    def test_check_and_decide(self, celgate: str, good: Path, tmp_path: Path) -> None:
        ok = subprocess.run(
            [celgate, "check", str(RULES)], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(f"ok: {len(rule_files([RULES]))} file(s)")
        bad = tmp_path / "bad.yaml"
        bad.write_text(_BAD)
        failed = subprocess.run(
            [celgate, "check", str(bad)], capture_output=True, text=True, timeout=60
        )
        assert failed.returncode == 1
        assert f"{bad}:4:" in failed.stderr and f"{bad}:6:" in failed.stderr
        dec = subprocess.run(
            [
                celgate,
                "decide",
                str(RULES / "seed-policy.json"),
                "--tool",
                "CreateCodeConnection",
                "--grant",
                "g",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dec.returncode == 0, dec.stderr
        assert json.loads(dec.stdout)["limits"][0]["key"] == "createcodeconnection_rate|grant=g"
        # a grant's roles and attrs are the config's: without it, say they are none
        assert "grant 'g' is decided with no roles and no attrs" in dec.stderr
        version = subprocess.run([celgate, "--version"], capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"celgate {__version__}"


@pytest.mark.parametrize(
    "grant", ["bot", "ops #1", "team: a", "x'y\"z", "yes", "null", "123", "1.0", "0x10", "off"]
)
def test_keys_new_prints_config_that_parses(grant: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--grant 'ops #1'`` printed a key YAML reads as a comment (red-team wave 47), and
    ``yes``, ``null`` or ``123`` keys YAML reads as no text (wave 60)."""
    import yaml

    assert main(["keys", "new", "--grant", grant]) == 0
    printed = capsys.readouterr().out.split("under `grants:`\n", 1)[1]
    parsed = yaml.safe_load("grants:\n" + printed)
    assert list(parsed["grants"]) == [grant]
    assert len(parsed["grants"][grant]["key_sha256"]) == 64
