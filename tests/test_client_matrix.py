"""The client matrix: clients nobody here wrote read every answer the gateway writes.

Clients: the Python SDK client (``mcp.Client``), the TypeScript SDK 1.32 client
(tests/peers_ts/client.mjs) and the MCP Inspector 2.12 CLI. Faces: the relay (``/mcp/up``) and
the aggregate (``/mcp``, tools named ``up__<tool>``). Eras: each the client speaks. Cells: the
list, an allowed call, a denied call on a tool with an output schema, a rate-limited call with
``retry_after``, an out-of-band approval (``retry`` mode) and an in-band one (``elicit``). A
client must show the reason text as a result, never an exception. What each client saw is
written to docs/clients.md (``CELGATE_WRITE_CLIENTS_MD=1``) or checked against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import CACHE, NODE, REPO_ROOT, TS_DIR, TS_SDK, PeerProcess, ts_sdk_ready

INSPECTOR = (
    CACHE / "inspector/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
)
CELLS = ("list", "allowed", "denied", "rate_limited", "approval_out_of_band", "approval_in_band")
POLICY = """
version: "1"
default: deny
tools:
  echo: {}
  add:
    rules:
      - id: no-adding
        when: 'args.a > 100'
        action: deny
        reason: numbers over 100 are not for agents
    action: allow
  execute_query:
    limits:
      - {counter: queries, window: hour, max: 1, scope: grant}
  write_file:
    action: require_approval
    approval: {mode: retry, timeout: 600}
  delete_item:
    action: require_approval
    approval: {mode: elicit, fallback: retry, timeout: 120}
"""
DECISION = "io.celgate/decision"
# Every call a row makes, in cell order after the list.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("allowed", "echo", {"text": "hello"}),
    ("denied", "add", {"a": 101, "b": 1}),
    ("rate_limited", "execute_query", {"sql": "select 1"}),
    ("rate_limited", "execute_query", {"sql": "select 1"}),
    ("approval_out_of_band", "write_file", {"path": "/tmp/x", "content": "x"}),
    ("approval_in_band", "delete_item", {"id": "matrix"}),
]


@dataclass(frozen=True)
class Row:
    client: str
    face: str  # relay | aggregate
    era: str  # 2025-11-25 | 2026-07-28

    @property
    def key(self) -> str:
        return f"{self.client}/{self.face}/{self.era}".replace(" ", "-")

    @property
    def agent_key(self) -> str:  # one grant per row: limits and approvals stay apart
        return "cgk_matrix_" + hashlib.sha256(self.key.encode()).hexdigest()[:24]


ROWS = [
    Row(name, face, era)
    for name, eras in [
        ("Python SDK 2.3", ("2025-11-25", "2026-07-28")),
        ("TypeScript SDK 1.32", ("2025-11-25",)),
        ("Inspector CLI 2.12", ("2025-11-25", "2026-07-28")),
    ]
    for face in ("relay", "aggregate")
    for era in eras
]
#: Cells a client cannot do, and why (shown in the table as such, never skipped silently).
NOT_APPLICABLE = "n/a: "


def _cannot(row: Row) -> str | None:
    """Every client, face and era is served now; kept for a cell a client cannot do."""
    return None


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if ts_sdk_ready() is not None or not INSPECTOR.exists():
        pytest.skip(
            "Node, the TypeScript SDK or the Inspector is missing (scripts/install_node.sh)"
        )
    grants = {
        row.key: {"key_sha256": hashlib.sha256(row.agent_key.encode()).hexdigest()} for row in ROWS
    }
    directory = tmp_path_factory.mktemp("matrix")
    with run_gateway(directory, POLICY, {"up": {"url": upstream.url}}, grants=grants) as gw:
        yield gw


# ------------------------------------------------------------------ what a client saw, per cell


def seen(result: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """A tool result (as JSON) or the exception a client raised, reduced to what a cell shows."""
    if error is not None:
        return {"exception": error}
    assert result is not None
    text = "".join(c.get("text", "") for c in result.get("content", []))
    decision = (result.get("_meta") or {}).get(DECISION) or {}
    return {"is_error": bool(result.get("isError")), "text": text, "decision": decision}


def cell_text(cell: str, outcome: dict[str, Any]) -> str:
    """The table's words for one cell."""
    if "na" in outcome:
        return NOT_APPLICABLE + outcome["na"]
    if "exception" in outcome:
        return "EXCEPTION: " + outcome["exception"][:80]
    if cell == "list":
        return f"ok: {outcome['count']} tools, the denied ones hidden"
    decision = outcome["decision"]
    if not outcome["is_error"]:
        suffix = (
            " (approved in the client)" if decision == {} and cell.startswith("approval") else ""
        )
        return "ok: the upstream's answer" + suffix
    code = decision.get("error") or f"{decision.get('effect')}, rule {decision.get('rule')}"
    extra = ""
    if "retry_after" in decision:
        extra = ", retry_after in _meta, 'Retry after' in the text"
    if "approval_id" in decision:
        extra = f", {decision['approval_id'][:4]}… in _meta"
    return f"reason shown ({code}{extra})"


# ------------------------------------------------------------------ the three clients


async def python_row(gw: GatewayProcess, row: Row) -> dict[str, dict[str, Any]]:
    url, prefix = _where(gw, row)
    mode = "legacy" if row.era == "2025-11-25" else row.era

    async def approve(_ctx: Any, _params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": True})

    out: dict[str, dict[str, Any]] = {}
    async with client(url, row.agent_key, mode=mode, elicitation_callback=approve) as c:
        listed = await c.list_tools()
        out["list"] = {"count": len(listed.tools), "names": [t.name for t in listed.tools]}
        for cell, tool, args in CALLS:
            try:
                result = await c.call_tool(prefix + tool, args)
                out[cell] = seen(result.model_dump(mode="json", by_alias=True, exclude_none=True))
            except Exception as exc:  # what the client raised is what the cell shows
                out[cell] = seen(None, f"{type(exc).__name__}: {exc}")
    return out


def ts_row(gw: GatewayProcess, row: Row) -> dict[str, dict[str, Any]]:
    url, prefix = _where(gw, row)
    calls = [{"name": prefix + tool, "arguments": args} for _, tool, args in CALLS]
    argv = [str(NODE), str(TS_DIR / "client.mjs"), str(TS_SDK), url, row.agent_key]
    done = subprocess.run(
        [*argv, json.dumps(calls), "accept"], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    assert "fatal" not in raw, raw
    out: dict[str, dict[str, Any]] = {"list": {"count": len(raw["tools"]), "names": raw["tools"]}}
    for (cell, _, _), call in zip(CALLS, raw["calls"], strict=True):
        error = call.get("error")
        out[cell] = seen(call.get("result"), error and error["message"])
    return out


def inspector_row(gw: GatewayProcess, row: Row) -> dict[str, dict[str, Any]]:
    url, prefix = _where(gw, row)
    era = "legacy" if row.era == "2025-11-25" else "modern"
    base = [str(NODE), str(INSPECTOR), "--cli", url, "--transport", "http"]
    base += [
        "--protocol-era",
        era,
        "--format",
        "json",
        "--header",
        f"Authorization: Bearer {row.agent_key}",
    ]

    def run(*args: str) -> tuple[dict[str, Any] | None, str]:
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=90, cwd=REPO_ROOT
        )
        body = done.stdout.strip()
        return (json.loads(body) if body.startswith("{") else None), done.stderr.strip()

    listed, why = run("--method", "tools/list")
    assert listed is not None, why
    tools = listed["result"]["tools"]
    out: dict[str, dict[str, Any]] = {
        "list": {"count": len(tools), "names": [t["name"] for t in tools]}
    }
    for cell, tool, args in CALLS:
        answer, stderr = run(
            "--method",
            "tools/call",
            "--tool-name",
            prefix + tool,
            "--tool-args-json",
            json.dumps(args),
        )
        result = (answer or {}).get("result")
        out[cell] = seen(result, None if result is not None else stderr[:200] or "no output")
    out["approval_in_band"]["no_elicitation"] = True  # the CLI declares none: the fallback
    return out


def _where(gw: GatewayProcess, row: Row) -> tuple[str, str]:
    if row.face == "relay":
        return gw.url("up"), ""
    return f"{gw.base}/mcp", "up__"


RUNNERS: dict[str, Callable[..., Any]] = {
    "Python SDK 2.3": python_row,
    "TypeScript SDK 1.32": ts_row,
    "Inspector CLI 2.12": inspector_row,
}
SEEN: dict[str, dict[str, dict[str, Any]]] = {}


@pytest.mark.parametrize("row", ROWS, ids=[r.key for r in ROWS])
async def test_every_client_reads_every_answer(gw: GatewayProcess, row: Row) -> None:
    why = _cannot(row)
    if why is not None:
        SEEN[row.key] = {cell: {"na": why} for cell in CELLS}
        return
    runner = RUNNERS[row.client]
    out = await runner(gw, row) if row.client.startswith("Python") else runner(gw, row)
    SEEN[row.key] = out
    _check(row, out)


def _check(row: Row, out: dict[str, dict[str, Any]]) -> None:
    prefix = "up__" if row.face == "aggregate" else ""
    names = set(out["list"]["names"])
    assert {prefix + t for t in ("echo", "add", "execute_query", "write_file")} <= names
    assert prefix + "crash" not in names
    for cell in CELLS[1:]:
        assert "exception" not in out[cell], (cell, out[cell])
    assert not out["allowed"]["is_error"] and "hello" in out["allowed"]["text"]
    denied = out["denied"]
    assert denied["is_error"] and "numbers over 100 are not for agents" in denied["text"]
    assert denied["decision"]["rule"] == "no-adding"
    limited = out["rate_limited"]
    assert limited["is_error"] and limited["decision"]["retry_after"] > 0
    assert "Retry after" in limited["text"]
    held = out["approval_out_of_band"]
    assert held["is_error"] and held["decision"]["approval_id"].startswith("apr_")
    assert "An operator must approve it" in held["text"]
    in_band = out["approval_in_band"]
    if in_band.get("no_elicitation"):
        # No elicitation in the Inspector CLI: the fallback.
        assert in_band["decision"]["error"] == "approval_pending", in_band
    else:
        assert not in_band["is_error"] and "deleted matrix" in in_band["text"], in_band


def test_the_table_in_docs_is_what_the_clients_saw() -> None:
    """Runs after the rows (file order); regenerate with ``CELGATE_WRITE_CLIENTS_MD=1``."""
    if len(SEEN) != len(ROWS):
        pytest.skip("the matrix rows did not all run in this session")
    table = render(SEEN)
    path = REPO_ROOT / "docs" / "clients.md"
    text = path.read_text() if path.exists() else ""
    start, end = "<!-- matrix:start -->\n", "<!-- matrix:end -->"
    if os.environ.get("CELGATE_WRITE_CLIENTS_MD") == "1":
        head, _, rest = text.partition(start)
        tail = rest.partition(end)[2]
        path.write_text(head + start + table + end + tail)
        return
    assert start + table + end in text, "docs/clients.md is stale: CELGATE_WRITE_CLIENTS_MD=1"


def render(seen_rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    heads = [
        "client",
        "face",
        "era",
        "list",
        "allowed call",
        "denied (output schema)",
        "rate limited",
        "approval out of band (retry)",
        "approval in band (elicit)",
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in ROWS:
        out = seen_rows[row.key]
        cells = []
        for cell in CELLS:
            words = cell_text(cell, out[cell])
            if out[cell].get("no_elicitation"):
                words = "n/a (no elicitation handler); fallback to retry: " + words
            cells.append(words)
        lines.append("| " + " | ".join([row.client, row.face, row.era, *cells]) + " |")
    return "\n".join(lines) + "\n"
