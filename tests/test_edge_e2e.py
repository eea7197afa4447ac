"""The relay end to end: the SDK's client over real HTTP, celgate and the test upstream as
real processes. Both protocol eras: ``legacy`` (initialize, sessions) and ``auto``
(2026-07-28, stateless)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import (
    OPERATOR,
    GatewayProcess,
    calls_in,
    client,
    decision_of,
    hidden_refusal,
    run_gateway,
    text_of,
)
from tests.peers import PeerProcess, http_upstream
from tests.servers.test_servers_smoke import elicitation_answering, sampling_answering

MODES = ["legacy", "auto"]

POLICY = r"""
version: "1"
default: deny
tools:
  echo: {action: allow}
  add: {}
  slow_progress: {action: allow}
  ask_user: {action: allow}
  sample: {action: allow}
  crash: {action: allow}
  calls_seen: {action: allow}
  execute_query:
    rules:
      - id: read-only
        when: 'args.sql.matches("(?i)^\\s*select\\b")'
        action: allow
      - id: no-writes
        action: deny
        reason: only SELECT statements are allowed
  delete_item:
    action: deny
    reason: deleting items is not allowed here
"""


@pytest.fixture(scope="module")
def gateway(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("gw")
    with run_gateway(directory, POLICY, {"up": {"url": upstream.url}}) as gw:
        yield gw


@pytest.mark.parametrize("mode", MODES)
class TestPolicyThroughTheRelay:
    async def test_tools_list_is_filtered_to_what_may_be_called(
        self, gateway: GatewayProcess, mode: str
    ) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert {"echo", "add", "execute_query", "slow_progress"} <= names
        assert "delete_item" not in names  # denied whatever the arguments
        assert "write_file" not in names  # not named: default deny
        assert "hang" not in names

    async def test_listed_tools_keep_their_fields(self, gateway: GatewayProcess, mode: str) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["echo"].input_schema["properties"]["text"]["type"] == "string"
        assert tools["echo"].annotations is not None and tools["echo"].annotations.read_only_hint
        meta = tools["echo"].meta or {}
        assert (meta["io.celgate/kind"], meta["io.celgate/risk"]) == ("read", "low")

    async def test_allowed_call_reaches_the_upstream(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            result = await c.call_tool("echo", {"text": f"hello {mode}"})
        assert not result.is_error
        assert f"hello {mode}" in text_of(result)
        assert any(c["arguments"] == {"text": f"hello {mode}"} for c in calls_in(call_log))

    async def test_denied_call_never_reaches_the_upstream(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            result = await c.call_tool("delete_item", {"id": f"x-{mode}"})
        record = hidden_refusal(gateway, result)  # hidden from its list: told as not there
        assert record["reason"] == "deleting items is not allowed here"
        assert record["rule"].endswith("policy.yaml:20")
        verdict = decision_of(result)
        assert verdict["effect"] == "deny"
        # no revision: a plain digest of the policy, agents could check guesses against it
        assert "revision" not in verdict and len(record["revision"]) == 16
        assert not any(c["tool"] == "delete_item" for c in calls_in(call_log))

    async def test_argument_conditions_decide(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            ok = await c.call_tool("execute_query", {"sql": f"SELECT '{mode}'"})
            refused = await c.call_tool("execute_query", {"sql": f"DROP TABLE t_{mode}"})
        assert not ok.is_error
        assert refused.is_error
        assert "only SELECT statements" in text_of(refused)
        assert decision_of(refused)["rule"] == "no-writes"
        sqls = [c["arguments"].get("sql") for c in calls_in(call_log)]
        assert f"SELECT '{mode}'" in sqls
        assert f"DROP TABLE t_{mode}" not in sqls

    async def test_an_argument_of_a_type_the_schema_does_not_allow_is_refused(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        """The SDK server would convert ``"1000"`` into a number and run it: the rules would
        have decided on a string. So the type is checked against the listed inputSchema."""
        gateway.wait_records(1, "catalog.refreshed")
        async with client(gateway.url("up"), mode=mode) as c:
            refused = await c.call_tool("add", {"a": "1000", "b": 1})
            nested = await c.call_tool("slow_progress", {"steps": True, "delay_ms": 1})
            fine = await c.call_tool("add", {"a": 1000, "b": 0.5})
        assert refused.is_error and decision_of(refused)["error"] == "argument_type"
        assert "argument a is a string; the tool's inputSchema says number" in text_of(refused)
        assert decision_of(refused)["rule"] == "schema"
        assert nested.is_error and "steps is a boolean" in text_of(nested)
        assert not fine.is_error and "1000.5" in text_of(fine)
        adds = [c["arguments"] for c in calls_in(call_log) if c["tool"] == "add"]
        assert {"a": "1000", "b": 1} not in adds and {"a": 1000, "b": 0.5} in adds

    async def test_unknown_tool_is_denied_by_default(
        self, gateway: GatewayProcess, mode: str
    ) -> None:
        async with client(gateway.url("up"), mode=mode) as c:
            result = await c.call_tool("no_such_tool", {})
        assert "default deny" in hidden_refusal(gateway, result)["reason"]

    async def test_progress_is_streamed(self, gateway: GatewayProcess, mode: str) -> None:
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        async with client(gateway.url("up"), mode=mode) as c:
            result = await c.call_tool(
                "slow_progress", {"steps": 4, "delay_ms": 20}, progress_callback=on_progress
            )
        assert not result.is_error
        assert seen == sorted(seen) and len(seen) == 4

    async def test_elicitation_is_relayed(self, gateway: GatewayProcess, mode: str) -> None:
        asked: list[Any] = []
        answer = elicitation_answering(f"blue-{mode}", asked)
        async with client(gateway.url("up"), mode=mode, elicitation_callback=answer) as c:
            result = await c.call_tool("ask_user", {"question": "favourite colour?"})
        assert not result.is_error
        assert f"blue-{mode}" in text_of(result)
        assert asked and "favourite colour?" in asked[0].message

    async def test_sampling_is_relayed(self, gateway: GatewayProcess, mode: str) -> None:
        seen: list[Any] = []
        answer = sampling_answering(f"sampled-{mode}", seen)
        async with client(gateway.url("up"), mode=mode, sampling_callback=answer) as c:
            result = await c.call_tool("sample", {"prompt": "say hi"})
        assert not result.is_error
        assert f"sampled-{mode}" in text_of(result)
        assert len(seen) == 1


class TestDecisionRecords:
    async def test_one_record_per_call_with_the_decision(self, gateway: GatewayProcess) -> None:
        async with client(gateway.url("up"), mode="legacy") as c:
            await c.call_tool("delete_item", {"id": "record-me"})
        await anyio.sleep(0.2)  # let the gateway's log line reach the file
        records = [r for r in gateway.records() if r["tool"] == "delete_item"]
        assert records
        rec = records[-1]
        assert rec["effect"] == "deny"
        assert rec["server"] == "up"
        assert rec["grant"] == "anonymous"
        assert rec["args_digest"].startswith("sha256:")
        assert "record-me" not in json.dumps(rec)  # arguments only as a digest
        assert rec["session"]  # the legacy era carries a session


def raw_post(gw: GatewayProcess, body: bytes | str, **headers: str) -> httpx.Response:
    base = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-11-25",
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(gw.url("up"), content=body, headers=base, timeout=10)


def call_body(name: str, arguments: Any, msg_id: int = 1) -> str:
    params = {"name": name, "arguments": arguments}
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params})


class TestBadInput:
    """Each bad request gets the right status and a JSON-RPC error, and nothing else breaks."""

    def test_malformed_json(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, b'{"jsonrpc": "2.0", "id": 1, "method": ')
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == -32700

    def test_duplicate_keys_are_rejected(self, gateway: GatewayProcess) -> None:
        params = '{"name":"echo","name":"delete_item"}'
        body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + "}"
        resp = raw_post(gateway, body)
        assert resp.status_code == 400
        assert "duplicate key" in resp.json()["error"]["message"]

    @pytest.mark.parametrize(
        "number",
        ["NaN", "Infinity", "-Infinity", "1e999", "-2.5E400", "1" * 5000],
        ids=["NaN", "Infinity", "-Infinity", "1e999", "-2.5E400", "5000 digits"],
    )
    def test_numbers_json_has_not_are_refused(self, gateway: GatewayProcess, number: str) -> None:
        """Python's parser reads them; a rule comparing NaN is false both ways, so a limit
        on an amount would be passed, and the upstream's parser may read them otherwise."""
        before = len(gateway.records())
        params = '{"name":"delete_item","arguments":{"id":' + number + "}}"
        body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + "}"
        resp = raw_post(gateway, body)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == -32700
        # Refused before any policy: the next call's record is the only one added.
        raw_post(gateway, call_body("echo", {"text": "after"}), mcp_session_id=_session(gateway))
        assert [r["tool"] for r in gateway.wait_records(before + 1)[before:]] == ["echo"]

    def test_a_tool_name_past_1024_characters_is_refused(self, gateway: GatewayProcess) -> None:
        resp = raw_post(
            gateway, call_body("e" * 1025, {}, msg_id=9), mcp_session_id=_session(gateway)
        )
        error = resp.json()["error"]
        assert error["code"] == -32602 and resp.json()["id"] == 9
        assert "at most 1024 characters" in error["message"]

    def test_wrong_content_type(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("echo", {}), content_type="text/plain")
        assert resp.status_code == 415

    @pytest.mark.parametrize("charset", ["latin-1", "utf-16", "ISO-8859-1"])
    def test_a_charset_other_than_utf8_is_refused(
        self, gateway: GatewayProcess, charset: str
    ) -> None:
        """The gateway reads the body as UTF-8; an upstream could read it in the charset the
        header names, and see another call than the one decided on."""
        content_type = f"application/json; charset={charset}"
        resp = raw_post(gateway, call_body("echo", {}), content_type=content_type)
        assert resp.status_code == 415

    @pytest.mark.parametrize(
        "content_type",
        ['application/json; charset="UTF-8"', "Application/JSON", "APPLICATION/json"],
    )
    def test_utf8_named_is_json(self, gateway: GatewayProcess, content_type: str) -> None:
        """Media types are case-insensitive: what the gateway read as JSON reaches the server
        as application/json (the SDK's server refused "Application/JSON" with 415)."""
        body = call_body("echo", {"text": "h\u00e9"})
        resp = raw_post(gateway, body, content_type=content_type, mcp_session_id=_session(gateway))
        assert resp.status_code == 200 and "h\u00e9" in resp.text

    def test_oversized_body(self, gateway: GatewayProcess) -> None:
        big = call_body("echo", {"text": "x" * (5 * 1024 * 1024)})
        resp = raw_post(gateway, big)
        assert resp.status_code == 413

    def test_batch_is_refused(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, "[" + call_body("echo", {}) + "]")
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == -32600

    def test_arguments_must_be_an_object(self, gateway: GatewayProcess) -> None:
        body = call_body("echo", ["not", "an", "object"], msg_id=7)
        resp = raw_post(gateway, body, mcp_session_id=_session(gateway))
        assert resp.json()["error"]["code"] == -32602
        assert resp.json()["id"] == 7

    def test_unknown_session(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("delete_item", {}), mcp_session_id="made-up.abc")
        assert resp.status_code == 404

    def test_sessionless_call_is_refused_before_any_denial(self, gateway: GatewayProcess) -> None:
        _session(gateway)  # the upstream has shown that it issues sessions
        resp = raw_post(gateway, call_body("delete_item", {}))
        assert resp.status_code == 400
        assert "deleting" not in resp.text  # the deny list is not revealed

    def test_a_fresh_replica_knows_the_upstream_issues_sessions(self, tmp_path: Path) -> None:
        with (
            http_upstream() as up,
            run_gateway(tmp_path, POLICY, {"up": {"url": up.url}}) as fresh,
        ):
            resp = raw_post(fresh, call_body("delete_item", {}))  # no initialize relayed yet
        assert resp.status_code == 400
        assert "deleting" not in resp.text

    @pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
    @pytest.mark.parametrize("path", ["/mcp/up", "/mcp"])
    def test_a_method_not_allowed_names_those_that_are(
        self, gateway: GatewayProcess, method: str, path: str
    ) -> None:
        """A 405 says which methods the path takes (RFC 9110 15.5.6: Allow is a MUST);
        the gateway's own 405s had none (red-team wave 58)."""
        resp = httpx.request(method, gateway.base + path, timeout=10)
        assert resp.status_code == 405
        assert resp.headers["allow"] == "GET, POST, DELETE"
        assert resp.json()["error"]["code"] == -32600

    def test_foreign_host_is_refused(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("echo", {}), host="evil.example.com")
        assert resp.status_code == 421

    def test_foreign_origin_is_refused(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("echo", {}), origin="http://evil.example.com")
        assert resp.status_code == 403

    def test_mcp_name_must_match_the_body(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("delete_item", {}), mcp_name="echo")
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == -32020

    def test_mcp_method_must_match_the_body(self, gateway: GatewayProcess) -> None:
        resp = raw_post(gateway, call_body("echo", {}), mcp_method="tools/list")
        assert resp.json()["error"]["code"] == -32020

    @pytest.mark.parametrize("path", ["/mcp/up", "/mcp"])
    def test_a_body_naming_the_stateless_era_needs_the_header(
        self, gateway: GatewayProcess, path: str
    ) -> None:
        """Servers pick the era by ``Mcp-Protocol-Version`` alone: a body whose ``_meta``
        named 2026-07-28 with no header was relayed as that era, and ran on the upstream's
        2025-03-26 path (red-team wave 62); ``/mcp`` refused it. Both refuse it."""
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        }
        params = {"name": "echo", "arguments": {"text": "x"}, "_meta": meta}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-method": "tools/call",
            "mcp-name": "echo" if path == "/mcp/up" else "up__echo",
        }
        if path == "/mcp":
            body["params"] = {**params, "name": "up__echo"}
        resp = httpx.post(gateway.base + path, json=body, headers=headers, timeout=10)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == -32020

    def test_unknown_server(self, gateway: GatewayProcess) -> None:
        resp = httpx.post(f"{gateway.base}/mcp/nope", content=b"{}", timeout=5)
        assert resp.status_code == 404

    def test_relayed_answer_has_one_date_and_no_server_software(
        self, gateway: GatewayProcess
    ) -> None:
        resp = raw_post(
            gateway, call_body("echo", {"text": "hdr"}), mcp_session_id=_session(gateway)
        )
        assert resp.status_code == 200 and "hdr" in resp.text
        names = [name.lower() for name, _ in resp.headers.multi_items()]
        assert names.count("date") == 1  # the upstream's Date is not added to the gateway's
        assert "server" not in names  # neither uvicorn nor the upstream is advertised

    @pytest.mark.parametrize("trusted", [False, True])
    def test_forwarded_for_only_from_a_trusted_proxy(
        self, tmp_path: Path, upstream: PeerProcess, trusted: bool
    ) -> None:
        """``request.ip`` is the socket's peer, unless that peer is a configured proxy."""
        policy = (
            'version: "1"\ndefault: deny\ntools:\n  echo:\n    rules:\n'
            "      - when: 'request.ip == \"203.0.113.9\"'\n        action: allow\n"
        )
        key = "cgk_forwarded-for-test-0123456789"
        extra: dict[str, Any] = {"grants": {"lb": {"key_sha256": hash_key(key)}}}
        if trusted:
            extra["listen"] = {"trusted_proxies": ["127.0.0.0/8"]}
        with run_gateway(tmp_path, policy, {"up": {"url": upstream.url}}, **extra) as gw:
            body = call_body("echo", {"text": "xff"})
            auth = f"Bearer {key}"
            sid = _session(gw, authorization=auth)
            resp = raw_post(
                gw, body, mcp_session_id=sid, x_forwarded_for="203.0.113.9", authorization=auth
            )
            assert resp.status_code == 200
            expected = "allow" if trusted else "deny"
            assert [r["effect"] for r in gw.wait_records(1)] == [expected]
            assert ("celgate refused this call" in resp.text) is not trusted

    async def test_gateway_keeps_serving_after_bad_input(self, gateway: GatewayProcess) -> None:
        raw_post(gateway, b"\xff\xfe garbage")
        async with client(gateway.url("up"), mode="legacy") as c:
            result = await c.call_tool("echo", {"text": "still here"})
        assert "still here" in text_of(result)


def _session(gw: GatewayProcess, **headers: str) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    resp = raw_post(gw, json.dumps(init), **headers)
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


class TestUpstreamFailure:
    async def test_a_silent_upstream_ends_the_call_with_an_error(self, tmp_path: Path) -> None:
        """2025-11-25: a tool that never answers (its stream open, keep-alives only) held the
        caller for good; past servers.X.timeout with no message, the call ends in an error
        the client reads, and the gateway serves on."""
        policy = POLICY + "  hang: {action: allow}\n"
        with (
            http_upstream() as up,
            run_gateway(tmp_path, policy, {"up": {"url": up.url, "timeout": 1}}) as gw,
        ):
            async with client(gw.url("up"), mode="legacy") as c:
                with anyio.fail_after(20), pytest.raises(BaseException) as caught:
                    await c.call_tool("hang", {})
                assert "sent nothing for 1 s" in repr(caught.value)
                assert text_of(await c.call_tool("echo", {"text": "after"})) == "after"

    @pytest.mark.parametrize("face", ["relay", "aggregate"])
    async def test_a_person_answering_the_server_is_not_silence(
        self, tmp_path: Path, face: str
    ) -> None:
        """2025-11-25: while the client is being asked (elicitation), the clock stops. The
        call was ended after servers.X.timeout of a person's thinking (red-team wave 35).
        The answer here is given only once a ``hang`` call, begun after the question came,
        has been ended by that same timeout: at least that long was taken to answer."""
        policy = POLICY + "  hang: {action: allow}\n"
        with (
            http_upstream() as up,
            run_gateway(tmp_path, policy, {"up": {"url": up.url, "timeout": 1}}) as gw,
        ):
            url = gw.url("up") if face == "relay" else f"{gw.base}/mcp"
            prefix = "" if face == "relay" else "up__"

            async def answer_later(context: Any, params: Any) -> types.ElicitResult:
                async with client(url, mode="legacy") as other:
                    with anyio.fail_after(20), pytest.raises(BaseException) as ended:
                        await other.call_tool(prefix + "hang", {})
                assert "sent nothing for 1 s" in repr(ended.value)
                return types.ElicitResult(action="accept", content={"answer": "slow-blue"})

            async with client(url, mode="legacy", elicitation_callback=answer_later) as c:
                with anyio.fail_after(30):
                    result = await c.call_tool(prefix + "ask_user", {"question": "colour?"})
            assert not result.is_error and "slow-blue" in text_of(result)

    async def test_upstream_killed_mid_call_gives_an_error_not_a_hang(self, tmp_path: Path) -> None:
        with (
            http_upstream() as up,
            run_gateway(tmp_path, POLICY, {"up": {"url": up.url}}, admin=OPERATOR) as gw,
        ):
            async with client(gw.url("up"), mode="legacy") as c:
                with anyio.fail_after(20):
                    with pytest.raises(BaseException) as caught:
                        await c.call_tool("crash", {})
                assert "cancel" not in type(caught.value).__name__.lower()
            assert not up.alive()
            # A later call gets a clear error at once, and the gateway is still alive.
            with anyio.fail_after(20), pytest.raises(BaseException) as later:
                async with client(gw.url("up"), mode="auto") as c2:
                    await c2.call_tool("echo", {"text": "anyone?"})
            assert "unavailable" in repr(later.value) or "502" in repr(later.value)
            async with httpx.AsyncClient(base_url=gw.base, timeout=5) as http:
                health = await http.get("/healthz")
                ready = await http.get("/readyz")
            assert health.status_code == 200
            assert ready.status_code == 503
            assert ready.json()["upstreams"] == {"up": "down"}
