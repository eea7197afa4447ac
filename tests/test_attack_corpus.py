"""The attack corpus (tests/attacks/relay.yaml) against every upstream kind, in both eras.

One gateway fronts five upstreams: the SDK test server (stateful, SSE answers), the same
server stateless with JSON answers, the same server over stdio, and the hand-written literal
server (tests/servers/literal.py), which runs ``tools/call`` notifications as JSON-RPC says it
may, once honest and once echoing ids as a JavaScript peer would. Each (upstream, era) pair
calls as its own grant, so the limit in the corpus policy counts per pair.

After every step, each upstream's own call log says what reached it: a step the gateway
refused or denied left no record, and at the end no upstream ever ran a denied or held tool,
a notification, or more calls of a limited tool than the limit allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway_proc import GatewayProcess, calls_in, run_gateway
from tests.peers import (
    PeerProcess,
    http_upstream,
    literal_upstream,
    start_ts_upstream,
    stdio_upstream_command,
    ts_sdk_ready,
)

HERE = Path(__file__).resolve().parent
CORPUS = yaml.safe_load((HERE / "attacks" / "relay.yaml").read_text(encoding="utf-8"))["cases"]
POLICY = (HERE / "attacks" / "policy.yaml").read_text(encoding="utf-8")
UPSTREAMS = ("sdk", "stateless", "stdio", "literal", "literal_ids", "ts")
ERAS = ("legacy", "modern")
MODERN = "2026-07-28"
NEVER = {"delete_item", "write_file", "calls_seen"}  # denied or held in the corpus policy
LIMITED = ("add", 3)


def _key(upstream: str, era: str) -> str:
    return f"key-{upstream}-{era}-0123456789abcdef"


def _literal(log: Path, id_mode: str = "") -> contextlib.AbstractContextManager[PeerProcess]:
    return literal_upstream({"UPSTREAM_CALL_LOG": str(log), "LITERAL_ID_MODE": id_mode})


class Corpus:
    def __init__(self, gw: GatewayProcess, logs: dict[str, Path], servers: set[str]) -> None:
        self.gw = gw
        self.servers = servers
        self.logs = logs
        self.http = httpx.Client(timeout=15)
        self.sessions: dict[tuple[str, str], str | None] = {}

    def headers(self, upstream: str, era: str) -> dict[str, str]:
        out = {
            "authorization": f"Bearer {_key(upstream, era)}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        if era == "modern":
            out["mcp-protocol-version"] = MODERN
            return out
        session = self.session(upstream)
        out["mcp-protocol-version"] = "2025-11-25"
        if session is not None:
            out["mcp-session-id"] = session
        return out

    def session(self, upstream: str) -> str | None:
        """A 2025-11-25 session of this upstream's legacy grant (initialize, initialized)."""
        if (upstream, "legacy") in self.sessions:
            return self.sessions[(upstream, "legacy")]
        base = {
            "authorization": f"Bearer {_key(upstream, 'legacy')}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "attack-corpus", "version": "1"},
            },
        }
        resp = self.http.post(self.gw.url(upstream), json=init, headers=base)
        assert resp.status_code == 200, resp.text
        session = resp.headers.get("mcp-session-id")
        if session is not None:
            base["mcp-session-id"] = session
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.http.post(self.gw.url(upstream), json=done, headers=base).status_code < 300
        self.sessions[(upstream, "legacy")] = session
        return session

    def send(self, upstream: str, era: str, step: dict[str, Any]) -> httpx.Response:
        headers = self.headers(upstream, era)
        headers.update(step.get("headers", {}))
        url = self.gw.url(upstream)
        if step.get("get"):
            headers.pop("content-type", None)
            headers["accept"] = "text/event-stream"
            return self.http.get(url, headers=headers)
        return self.http.post(url, content=_body(step, era), headers=headers)

    def calls(self, upstream: str) -> list[dict[str, Any]]:
        return calls_in(self.logs[upstream])


def _body(step: dict[str, Any], era: str) -> bytes:
    if "raw" in step:
        return str(step["raw"]).encode("utf-8", "surrogatepass")
    if "raw_hex" in step:
        return bytes.fromhex(step["raw_hex"])
    if "deep" in step:
        depth = int(step["deep"])
        args = '{"text":' + "[" * depth + "]" * depth + "}"
        head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":'
        return (head + args + "}}").encode()
    body = json.loads(json.dumps(step["body"]))
    params = body.get("params")
    if era == "modern" and isinstance(params, dict):
        meta = params.setdefault("_meta", {})
        meta["io.modelcontextprotocol/protocolVersion"] = MODERN
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _messages(resp: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer, JSON or SSE."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for event in resp.text.replace("\r\n", "\n").split("\n\n"):
            data = [ln[5:].lstrip() for ln in event.split("\n") if ln.startswith("data:")]
            if data and "".join(data).strip():
                out.append(json.loads("\n".join(data)))
        return out
    if not resp.content:
        return []
    value = json.loads(resp.content)
    return value if isinstance(value, list) else [value]


def _check(resp: httpx.Response, expect: dict[str, Any], where: str) -> None:
    assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text[:300]}"
    if "status" in expect:
        assert resp.status_code == expect["status"], f"{where}: {resp.status_code} {resp.text}"
    messages = _messages(resp)
    if expect.get("refused"):
        assert messages and "error" in messages[-1], f"{where}: not refused: {resp.text[:300]}"
        if "code" in expect:
            assert messages[-1]["error"]["code"] == expect["code"], f"{where}: {resp.text}"
    if expect.get("denied"):
        result = messages[-1].get("result", {})
        assert result.get("isError") is True, f"{where}: not denied: {resp.text[:300]}"
        assert "io.celgate/decision" in result.get("_meta", {}), where
        assert "structuredContent" not in result, where
    for message in messages:
        tools = message.get("result", {}).get("tools")
        if tools is not None:
            names = {t["name"] for t in tools}
            assert not names & set(expect.get("hidden", [])), f"{where}: listed {names}"
            assert "echo" in names, f"{where}: {names}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    tmp = tmp_path_factory.mktemp("attacks")
    logs = {name: tmp / f"{name}.jsonl" for name in UPSTREAMS}
    grants = {
        f"{up}-{era}": {"key_sha256": hashlib.sha256(_key(up, era).encode()).hexdigest()}
        for up in UPSTREAMS
        for era in ERAS
    }
    with contextlib.ExitStack() as stack:
        if ts_sdk_ready() is None:  # the TypeScript SDK server, when Node can be set up
            ts = start_ts_upstream({"UPSTREAM_CALL_LOG": str(logs["ts"])})
            stack.callback(ts.stop)
            extra = {"ts": {"url": ts.url}}
        else:
            extra = {}
        yield from _with_python_upstreams(tmp, logs, grants, extra)


def _with_python_upstreams(
    tmp: Path, logs: dict[str, Path], grants: dict[str, Any], extra: dict[str, Any]
) -> Iterator[Corpus]:
    command, args = stdio_upstream_command()
    with (
        http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(logs["sdk"])}) as sdk,
        http_upstream(
            extra_env={"UPSTREAM_CALL_LOG": str(logs["stateless"])}, stateless=True
        ) as stateless,
        _literal(logs["literal"]) as literal,
        _literal(logs["literal_ids"], "float") as literal_ids,
    ):
        servers = {
            "sdk": {"url": sdk.url},
            "stateless": {"url": stateless.url},
            "stdio": {
                "command": command,
                "args": args,
                "env": {"UPSTREAM_CALL_LOG": str(logs["stdio"]), "PYTHONPATH": str(HERE.parent)},
            },
            "literal": {"url": literal.url},
            "literal_ids": {"url": literal_ids.url},
            **extra,
        }
        with run_gateway(tmp, POLICY, servers, grants=grants) as gw:
            yield Corpus(gw, logs, set(servers))


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in CORPUS])
def test_case(corpus: Corpus, case: dict[str, Any], era: str, upstream: str) -> None:
    """Each step's answer is as expected, and a refused or denied step reached nobody."""
    if upstream not in corpus.servers:
        pytest.skip(f"no {upstream} upstream here: {ts_sdk_ready()}")
    if case.get("era", era) != era:
        pytest.skip(f"a {case['era']}-era case")
    for number, step in enumerate(case["steps"]):
        where = f"{case['name']}[{number}] {upstream}/{era}"
        before = {name: len(corpus.calls(name)) for name in corpus.servers}
        resp = corpus.send(upstream, era, step)
        _check(resp, step["expect"], where)
        if step["expect"].get("refused") or step["expect"].get("denied"):
            after = {name: len(corpus.calls(name)) for name in corpus.servers}
            assert after == before, f"{where}: reached an upstream: {corpus.calls(upstream)[-1]}"


def test_nothing_denied_ever_arrived(corpus: Corpus) -> None:
    """Read last: across every case, upstream and era, the upstreams' own logs."""
    for name in sorted(corpus.servers):
        calls = corpus.calls(name)
        assert any(c["tool"] == "echo" for c in calls), f"{name}: the log is not being written"
        assert not [c for c in calls if c["tool"] in NEVER], name
        assert not [c for c in calls if c.get("notification")], name
        tool, limit = LIMITED
        assert len([c for c in calls if c["tool"] == tool]) <= limit * len(ERAS), name
