"""An entry naming a server the gateway does not serve matches nothing, and what it says (a
deny, an approval, a limit) silently does nothing: one in another case than a configured
server is refused (at start, on reload, by ``celgate check --config``), any other is said."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy import Call, decide, load_policy
from gateway.policy.servers import unknown_servers
from gateway.server.build import build_gateway
from gateway.server.reload import Reloader
from tests.gateway_proc import write_config
from tests.peers import free_port

SERVERS = {"demo": {"url": "http://127.0.0.1:9/mcp"}, "redshift": {"url": "http://127.0.0.1:9/x"}}
ALLOW = '"*": {action: allow}\n'


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"default: deny\ntools:\n  {ALLOW}{text}")
    return path


def test_a_case_variant_is_refused_and_an_unknown_name_said(tmp_path: Path) -> None:
    policy = load_policy(
        [
            _policy(
                tmp_path,
                "  Demo/test_simple_text: {action: deny}\n"
                "  redshfit/execute_query: {action: deny}\n"
                "  github/*: {action: deny}\n"
                "  demo/delete_note: {action: deny}\n"
                "  delete_note: {action: deny}\n",
            )
        ]
    )
    refused, told = unknown_servers(policy, SERVERS)
    assert [(str(p.where), p.field) for p in refused] == [("p.yaml:4", "Demo/test_simple_text")]
    assert "'demo'" in refused[0].message
    assert sorted(p.field for p in told) == ["github/*", "redshfit/execute_query"]
    assert "did you mean 'redshift'" in next(p.message for p in told if "redshfit" in p.field)


def test_the_gateway_does_not_start_on_a_case_variant(tmp_path: Path) -> None:
    policy = f"default: deny\ntools:\n  {ALLOW}  Demo/test_simple_text: {{action: deny}}\n"
    config = write_config(tmp_path, policy, SERVERS, 9)
    with pytest.raises(ConfigError, match="no server 'Demo'; the config's is 'demo'"):
        build_gateway(load_config(config))


def test_decide_with_the_config_refuses_what_the_gateway_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``celgate decide --config`` decided a policy the gateway would not start on, as if
    its entries for ``Demo`` were in force; and it says what the gateway warns of."""
    policy = f"default: deny\ntools:\n  {ALLOW}  Demo/test_simple_text: {{action: deny}}\n"
    config = write_config(tmp_path, policy, SERVERS, 9)
    argv = ["decide", "--config", str(config), "--tool", "test_simple_text", "--server", "demo"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no server 'Demo'; the config's is 'demo'" in err and "rejected" in err
    policy = f"default: deny\ntools:\n  {ALLOW}  github/delete_note: {{action: deny}}\n"
    config = write_config(tmp_path, policy, SERVERS, 9)
    assert main(["decide", "--config", str(config), "--tool", "delete_note"]) == 0
    assert "warning: " in capsys.readouterr().err


async def test_the_warnings_of_the_policy_in_force_are_kept_for_the_console(
    tmp_path: Path,
) -> None:
    """From start (they were in the log only) and from each reload that loads."""
    from gateway.server.admin import _policy_view

    text = f"default: deny\ntools:\n  {ALLOW}  github/delete_note: {{action: deny}}\n"
    gateway = build_gateway(load_config(write_config(tmp_path, text, SERVERS, 9)))
    assert ["no server 'github'" in w for w in _policy_view(gateway)["warnings"]] == [True]
    (tmp_path / "policy.yaml").write_text(f"default: deny\ntools:\n  {ALLOW}")
    assert await Reloader(gateway).reload("test") is True
    assert _policy_view(gateway)["warnings"] == []


async def test_a_reload_with_a_case_variant_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"default: deny\ntools:\n  {ALLOW}", SERVERS, 9)
    gateway = build_gateway(load_config(config))
    reloader = Reloader(gateway)
    before = gateway.policy.revision
    (tmp_path / "policy.yaml").write_text(
        f"default: deny\ntools:\n  {ALLOW}  DEMO/delete_note: {{action: deny}}\n"
    )
    assert await reloader.reload("test") is False
    assert gateway.policy.revision == before
    assert reloader.last is not None and "no server 'DEMO'" in reloader.last["problems"][0]
    (tmp_path / "policy.yaml").write_text(
        f"default: deny\ntools:\n  {ALLOW}  github/delete_note: {{action: deny}}\n"
    )
    assert await reloader.reload("test") is True  # loaded, and said
    assert reloader.last is not None
    assert ["no server 'github'" in w for w in reloader.last["warnings"]] == [True]


def test_check_with_the_config_says_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"default: deny\ntools:\n  {ALLOW}  redshfit/execute_query: {{action: deny}}\n"
    config = write_config(tmp_path, text, SERVERS, 9)
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ok: 1 file(s), 2 tool entries")
    assert "warning: policy.yaml:4: redshfit/execute_query: no server 'redshfit'" in out.err
    assert main(["check", str(tmp_path / "policy.yaml")]) == 0  # no config: no servers known
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "policy.yaml").write_text(text.replace("redshfit", "RedShift"))
    assert main(["check", "--config", str(config)]) == 1
    assert "no server 'RedShift'; the config's is 'redshift'" in capsys.readouterr().err


def test_the_served_gateway_refuses_to_start_on_one(tmp_path: Path) -> None:
    policy = f"default: deny\ntools:\n  {ALLOW}  Demo/test_simple_text: {{action: deny}}\n"
    config = write_config(tmp_path, policy, SERVERS, free_port())
    run = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "policy.yaml:4: Demo/test_simple_text: no server 'Demo'" in done.stderr


RULE = """\
default: deny
tools:
  report:
    rules:
      - {when: 'request.time < "2026-12-01T12:00:00+00:00"', action: allow}
"""


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 12, 1, 11, 0),  # no offset: UTC
        datetime(2026, 12, 1, 11, 0, tzinfo=UTC),
    ],
)
def test_request_time_is_utc_whatever_offset_now_is_given_with(
    tmp_path: Path, now: datetime
) -> None:
    """``celgate decide --now`` and a test case's ``now:`` with an offset kept it in
    ``request.time`` (``...13:00:00+02:00``), which the gateway always writes in UTC: the
    same instant compared otherwise offline than served."""
    path = tmp_path / "r.yaml"
    path.write_text(RULE)
    decision = decide(load_policy([path]), Call(tool="report"), now)
    assert decision.effect == "allow"


def test_decide_now_with_an_offset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE)
    argv = ["decide", str(path), "--tool", "report", "--now", "2026-12-01T13:00:00+02:00"]
    assert main(argv) == 0
    assert '"effect": "allow"' in capsys.readouterr().out


CUT_OFF = """\
default: deny
tools:
  report:
    rules:
      - {when: 'request.time < "2026-12-01T17:00:00.000000+00:00"', action: allow}
      - {when: 'size(request.time) == 32', action: allow}
"""


@pytest.mark.parametrize("micros", [0, 1])
def test_request_time_has_its_six_digits_on_a_whole_second_too(tmp_path: Path, micros: int) -> None:
    """``request.time`` is written as the docs show it (``...00.123456+00:00``): on a whole
    second ``isoformat`` wrote no fraction, ``'+'`` sorts before ``'.'``, and a cut-off
    written in that shape allowed the call at exactly its second (the first rule here); a
    rule checking the shape (the second) denied every whole second."""
    cut_off, shape = CUT_OFF.splitlines(keepends=True)[-2:]
    at = datetime(2026, 12, 1, 17, 0, 0, micros, tzinfo=UTC)
    path = tmp_path / "r.yaml"
    path.write_text(CUT_OFF.replace(shape, ""))
    assert decide(load_policy([path]), Call(tool="report"), at).effect == "deny"
    path.write_text(CUT_OFF.replace(cut_off, ""))
    assert decide(load_policy([path]), Call(tool="report"), at).effect == "allow"


def test_approval_settings_that_hold_nothing_are_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``drop_table: {approval: {mode: wait}}`` reads as "held" and allows: said at check,
    load and reload, as an unknown server is."""
    text = (
        "default: deny\n"
        "tools:\n"
        "  drop_table: {action: allow, approval: {mode: wait, timeout: 600}}\n"
        "  query:\n"
        "    rules:\n"
        "      - {id: ok, action: allow, approval: {mode: retry}}\n"
        "  deploy: {action: require_approval, approval: {mode: wait}}\n"
    )
    (tmp_path / "policy.yaml").write_text(text)
    assert main(["check", str(tmp_path / "policy.yaml")]) == 0
    err = capsys.readouterr().err
    assert "warning: policy.yaml:3: drop_table: approval settings, but no require_approval" in err
    assert "query: approval settings on a rule whose action is allow" in err
    assert "deploy" not in err  # it holds: its settings are used
