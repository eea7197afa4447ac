"""The example rule files operators copy: each passes ``celgate check`` alone and together,
and means what its comments say. The seed ``policy.json`` loads verbatim."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy import (
    Call,
    CompiledPolicy,
    Decision,
    Identity,
    ToolInfo,
    decide,
    load_policy,
    rule_files,
)

RULES = Path(__file__).resolve().parent.parent / "rules"
SEED = Path("/work/shared/seed/policy.json")
NOW = datetime(2026, 3, 14, 13, 30, tzinfo=UTC)
EXAMPLES = [path for path, _ in rule_files([RULES])]


def _decide(policy: CompiledPolicy, tool: str, **kw: object) -> Decision:
    return decide(policy, Call(tool=tool, **kw), NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_file_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("ok: 1 file(s)")


def test_folder_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(RULES)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"ok: {len(EXAMPLES)} file(s)")


class TestSeed:
    """The operator's policy.json: default deny, one tool allowed at 30 calls a minute per grant."""

    @pytest.fixture(scope="class")
    @classmethod
    def seed(cls) -> CompiledPolicy:
        return load_policy([RULES / "seed-policy.json"])

    def test_copy_is_verbatim(self) -> None:
        if not SEED.exists():
            pytest.skip(f"{SEED} not present")
        assert (RULES / "seed-policy.json").read_bytes() == SEED.read_bytes()

    def test_listed_tool_allowed_with_limit(self, seed: CompiledPolicy) -> None:
        d = _decide(seed, "CreateCodeConnection", identity=Identity(grant="g1", agent="a"))
        assert d.effect == "allow"
        assert d.rule == "seed-policy.json:5"  # relative to the policy root: no paths to agents
        [limit] = d.limits
        assert (limit.counter, limit.max, limit.window) == ("createcodeconnection_rate", 30, 60.0)
        assert (limit.scope, limit.key) == ("grant", "createcodeconnection_rate|grant=g1")

    def test_listed_tool_on_any_server(self, seed: CompiledPolicy) -> None:
        assert _decide(seed, "CreateCodeConnection", server="codeconnections").allowed

    @pytest.mark.parametrize("tool", ["DeleteCodeConnection", "createcodeconnection", "x", ""])
    def test_other_tools_denied(self, seed: CompiledPolicy, tool: str) -> None:
        d = _decide(seed, tool)
        assert (d.effect, d.rule, d.limits) == ("deny", "default", ())

    def test_default_is_deny(self, seed: CompiledPolicy) -> None:
        assert seed.default == "deny"


class TestRedshiftReadOnly:
    @pytest.fixture(scope="class")
    @classmethod
    def policy(cls) -> CompiledPolicy:
        return load_policy([RULES / "redshift.yaml"])

    def _query(self, policy: CompiledPolicy, sql: str) -> Decision:
        return _decide(policy, "execute_query", server="redshift", args={"sql": sql})

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT * FROM sales",
            "  select 1",
            "with x as (select 1) select * from x",
            "show tables",
            "EXPLAIN select 1",
            "select 1;",
            "select 1;  ",
        ],
    )
    def test_reads_allowed(self, policy: CompiledPolicy, sql: str) -> None:
        d = self._query(policy, sql)
        assert (d.effect, d.rule) == ("allow", "read-only-sql")
        assert [lim.key for lim in d.limits] == ["redshift_queries|agent=anonymous/anonymous"]

    @pytest.mark.parametrize(
        "sql",
        [
            "delete from t",
            "selectx from t",
            "insert into t select 1",
            "update t set a = 1",
            "select * into sales_copy from sales",  # creates a table
            "",
        ],
    )
    def test_writes_refused(self, policy: CompiledPolicy, sql: str) -> None:
        d = self._query(policy, sql)
        assert (d.effect, d.rule, d.limits) == ("deny", "no-writes", ())
        assert "read-only SQL" in d.reason

    @pytest.mark.parametrize(
        "sql", ["select 1; drop table t", "DROP TABLE t", "alter table sales drop column qty"]
    )
    @pytest.mark.parametrize("roles", [(), ("dba",)])
    def test_drops_truncates_and_grants_are_refused_to_everyone(
        self, policy: CompiledPolicy, sql: str, roles: tuple[str, ...]
    ) -> None:
        """The file says so ("for anyone, ever"); a DBA's were held for approval."""
        identity = Identity(grant="g", agent="g", roles=roles)
        d = _decide(
            policy, "execute_query", server="redshift", args={"sql": sql}, identity=identity
        )
        assert (d.effect, d.rule) == ("deny", "no-drop-truncate-grant")

    def test_sql_missing_fails_closed(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "execute_query", server="redshift", args={"query": "select 1"})
        assert (d.effect, d.error) == ("deny", "cel.missing_key")

    def test_listing_allowed_other_tools_denied(self, policy: CompiledPolicy) -> None:
        assert _decide(policy, "list_clusters", server="redshift").allowed
        assert not _decide(policy, "list_clusters", server="postgres").allowed
        assert not _decide(policy, "execute_query", args={"sql": "select 1"}).allowed
        assert _decide(policy, "create_cluster", server="redshift").rule == "default"


class TestApproveDestructive:
    @pytest.fixture(scope="class")
    @classmethod
    def policy(cls) -> CompiledPolicy:
        return load_policy([RULES / "approve-destructive.yaml"])

    def test_delete_waits(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "delete_note")
        assert d.effect == "require_approval"
        assert d.reason == "deleting needs a human's approval"
        assert d.approval is not None and (d.approval.mode, d.approval.timeout) == ("wait", 300)

    def test_drop_retries(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "drop_table")
        assert d.approval is not None and d.approval.mode == "retry"

    def test_risk_and_kind(self, policy: CompiledPolicy) -> None:
        high = _decide(policy, "git_push", info=ToolInfo(risk="high", kind="read"))
        assert (high.effect, high.rule) == ("require_approval", "high-risk-needs-approval")
        read = _decide(policy, "git_log", info=ToolInfo(risk="low", kind="read"))
        assert (read.effect, read.rule) == ("allow", "reads-are-fine")
        write = _decide(policy, "git_commit", info=ToolInfo(risk="low", kind="write"))
        assert (write.effect, write.rule) == ("deny", "default")


class TestDailyCap:
    @pytest.fixture(scope="class")
    @classmethod
    def policy(cls) -> CompiledPolicy:
        return load_policy([RULES / "daily-cap.yaml"])

    def test_create_capped_per_agent_and_globally(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "create_note", identity=Identity(grant="k", agent="bot"))
        assert d.allowed
        assert [lim.key for lim in d.limits] == [
            "writes_per_agent_day|agent=k/bot",
            "writes_global_burst|global=*",
        ]
        assert [(lim.max, lim.window) for lim in d.limits] == [(200, 86400.0), (20, 10.0)]

    def test_update_own_note(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "update_note", args={"owner": "bot"}, identity=Identity(agent="bot"))
        assert d.allowed and len(d.limits) == 2

    def test_update_without_owner(self, policy: CompiledPolicy) -> None:
        # Leaving the owner out let any agent update any note: refused (and not an error).
        d = _decide(policy, "update_note", args={"text": "x"}, identity=Identity(agent="bot"))
        assert (d.effect, d.error, d.limits) == ("deny", None, ())

    def test_update_someone_elses_note(self, policy: CompiledPolicy) -> None:
        d = _decide(policy, "update_note", args={"owner": "alice"}, identity=Identity(agent="bot"))
        assert (d.effect, d.limits) == ("deny", ())
        assert d.reason == "agents may only update their own notes (give owner, your agent name)"

    def test_admin_updates_any_note(self, policy: CompiledPolicy) -> None:
        admin = Identity(agent="root", roles=("admin",))
        assert _decide(policy, "update_note", args={"owner": "alice"}, identity=admin).allowed

    def test_other_tools_denied(self, policy: CompiledPolicy) -> None:
        assert not _decide(policy, "delete_note").allowed
