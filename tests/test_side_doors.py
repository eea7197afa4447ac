"""Side doors of the relay, closed: every message back passes the caller's view, resumed
streams included; event ids belong to the caller they were given to; operator pages are the
operator's; and a fuzz of bodies and headers never gets a denied call to an upstream that
would run it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.sse import (
    DROP,
    MAX_BATCH,
    MAX_MENDED_BYTES,
    MAX_NOTICE_BYTES,
    NO_ID,
    SseRewriter,
    answer_alone,
    answered_id,
    carries_id,
    filtered,
)
from tests.gateway_proc import GatewayProcess, calls_in, run_gateway
from tests.peers import PeerProcess, literal_upstream

KEY_A = "key-grant-a-0123456789abcdef"
KEY_B = "key-grant-b-0123456789abcdef"
GRANTS = {
    "a": {"key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "roles": ["reader"]},
    "b": {"key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "roles": ["admin"]},
}
POLICY = """
version: "1"
default: deny
tools:
  echo: {}
  add: {}
  delete_item:
    rules:
      - when: '"admin" in agent.roles'
        action: allow
"""
ACCEPT = "application/json, text/event-stream"


def _headers(key: str, session: str | None = None, **extra: str) -> dict[str, str]:
    out = {"authorization": f"Bearer {key}", "content-type": "application/json", "accept": ACCEPT}
    out["mcp-protocol-version"] = "2025-11-25"
    if session is not None:
        out["mcp-session-id"] = session
    out.update(extra)
    return out


def _events(text: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    """(id, message) of each SSE event."""
    out: list[tuple[str | None, dict[str, Any] | None]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event_id = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        joined = "\n".join(data).strip()
        out.append((event_id, json.loads(joined) if joined else None))
    return out


def _open_session(http: httpx.Client, url: str, key: str) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "side-doors", "version": "1"},
        },
    }
    resp = http.post(url, json=init, headers=_headers(key))
    session = resp.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert http.post(url, json=done, headers=_headers(key, session)).status_code == 202
    return session


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("side-doors")
    with run_gateway(tmp, POLICY, {"up": {"url": upstream.url}}, grants=GRANTS) as gw:
        yield gw


class TestResumedStreams:
    def _listed(self, gw: GatewayProcess) -> tuple[httpx.Client, str, list[Any]]:
        http = httpx.Client(timeout=10)
        session = _open_session(http, gw.url("up"), KEY_A)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        # A client that names the stream first gets the upstream's stream, ids and all (an
        # answer that comes alone goes as JSON otherwise, with no event id to resume from).
        headers = _headers(KEY_A, session, accept="text/event-stream, application/json")
        resp = http.post(gw.url("up"), json=body, headers=headers)
        assert resp.headers["content-type"].startswith("text/event-stream")
        return http, session, _events(resp.text)

    def test_a_resumed_tools_list_is_filtered_too(self, gw: GatewayProcess) -> None:
        """GET with the Last-Event-ID of a filtered list replays it filtered, not whole."""
        http, session, events = self._listed(gw)
        listed = [m for _, m in events if m is not None and "result" in m]
        assert {t["name"] for t in listed[0]["result"]["tools"]} >= {"echo", "add"}
        assert "delete_item" not in {t["name"] for t in listed[0]["result"]["tools"]}
        first_id = events[0][0]
        assert first_id is not None and "." in first_id  # a priming event, id bound to us
        headers = _headers(KEY_A, session, **{"last-event-id": first_id})
        headers["accept"] = "text/event-stream"
        with http.stream("GET", gw.url("up"), headers=headers) as resp:
            assert resp.status_code == 200
            text = ""
            for chunk in resp.iter_text():
                text += chunk
                if "tools" in text and text.endswith("\n\n"):
                    break
        replayed = [m for _, m in _events(text) if m is not None and "result" in m]
        assert replayed, text
        names = {t["name"] for t in replayed[0]["result"]["tools"]}
        assert "delete_item" not in names and "echo" in names

    def test_another_grants_event_id_replays_nothing(self, gw: GatewayProcess) -> None:
        http, _, events = self._listed(gw)
        first_id = events[0][0]
        assert first_id is not None
        session_b = _open_session(http, gw.url("up"), KEY_B)
        headers = _headers(KEY_B, session_b, **{"last-event-id": first_id})
        resp = http.get(gw.url("up"), headers=headers)
        assert resp.status_code == 400
        assert resp.json()["error"]["message"] == "Last-Event-ID not recognised"

    def test_a_made_up_event_id_replays_nothing(self, gw: GatewayProcess) -> None:
        http, session, events = self._listed(gw)
        first_id = events[0][0]
        assert first_id is not None
        raw = first_id.rpartition(".")[0]
        for forged in (raw, raw + ".AAAA", "0", first_id + "x"):
            headers = _headers(KEY_A, session, **{"last-event-id": forged})
            assert http.get(gw.url("up"), headers=headers).status_code == 400, forged


class TestOperatorPages:
    def test_closed_without_an_admin_token(self, upstream: PeerProcess, tmp_path: Path) -> None:
        with run_gateway(tmp_path, POLICY, {"up": {"url": upstream.url}}) as gw:
            assert httpx.get(gw.base + "/metrics", timeout=5).status_code == 403
            assert httpx.get(gw.base + "/openapi/openapi.json", timeout=5).status_code == 403

    def test_guarded_whatever_the_path_host_or_number_of_guesses(
        self, upstream: PeerProcess, tmp_path: Path
    ) -> None:
        """The schema however its path is written; a DNS-rebinding page (a foreign Host) reads
        no operator page; wrong tokens on any operator page are counted and throttled as on
        the admin API, so guessing there is no faster."""
        token = "operator-pages-token-0123456789"
        admin = {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        with run_gateway(tmp_path, POLICY, {"up": {"url": upstream.url}}, admin=admin) as gw:
            for path in ("//openapi/openapi.json", "///openapi", "//openapi", "/openapi/"):
                assert httpx.get(gw.base + path, timeout=5).status_code in (401, 404), path
            good = {"authorization": f"Bearer {token}"}
            evil = {"host": "evil.example:8787", **good}
            for path in ("/metrics", "/openapi/openapi.json"):
                assert httpx.get(gw.base + path, headers=evil, timeout=5).status_code == 421
            foreign = httpx.get(gw.base + "/readyz", headers=evil, timeout=5)
            assert foreign.json() == {"status": "ready"}  # a probe's Host may be anything
            codes = []
            for n in range(12):
                wrong = {"authorization": f"Bearer guess-{n}"}
                path = ("/metrics", "/openapi/openapi.json", "/readyz")[n % 3]
                codes.append(httpx.get(gw.base + path, headers=wrong, timeout=5).status_code)
            assert 429 in codes[-3:]
            locked = httpx.get(gw.base + "/admin/policy", headers=good, timeout=5)
            assert locked.status_code == 429  # one count, shared with the admin API

    def test_open_when_the_operator_says_so(self, upstream: PeerProcess, tmp_path: Path) -> None:
        servers = {"up": {"url": upstream.url}}
        with run_gateway(
            tmp_path,
            POLICY,
            servers,
            admin={"metrics_public": True, "token_sha256": hashlib.sha256(b"open").hexdigest()},
        ) as gw:
            assert httpx.get(gw.base + "/metrics", timeout=5).status_code == 200
            assert httpx.get(gw.base + "/openapi/openapi.json", timeout=5).status_code == 200


class _View:
    """A view that hides ``secret`` and binds ids by prefixing them."""

    def wants(self, data: bytes) -> bool:
        return b'"tools"' in data or b"\\u" in data

    def filter(self, message: Any) -> Any | None:
        if isinstance(message, dict) and isinstance(message.get("result"), dict):
            tools = message["result"].get("tools")
            if tools is not None:
                kept = [t for t in tools if t.get("name") != "secret"]
                return {**message, "result": {**message["result"], "tools": kept}}
        return None

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return b"bound-" + event_id


LIST = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"},{"name":"echo"}]}}'


class TestSseRewriter:
    def _run(self, chunks: list[bytes]) -> bytes:
        rewriter = SseRewriter(_View())
        return b"".join(rewriter.feed(c) for c in chunks) + rewriter.close()

    @pytest.mark.parametrize("split", [1, 7, 20, 64])
    def test_split_events_and_line_ends(self, split: int) -> None:
        stream = b"id: 5\r\nevent: message\r\ndata: " + LIST + b"\r\n\r\n: ping\n\n"
        out = self._run([stream[i : i + split] for i in range(0, len(stream), split)])
        assert b"secret" not in out and b"echo" in out
        assert b"id: bound-5\n" in out and b": ping" in out

    def test_long_fields_go_on_short_and_other_event_types_as_messages(self) -> None:
        """A 2 MiB comment, event id or event type went on as it came, and the Python SDK
        ended the stream on a line past 1 MiB: the answer behind it was lost; an answer under
        an event type no client reads was lost too (red-team wave 58)."""
        long = b"x" * (2 << 20)
        stream = (
            b": "
            + long
            + b"\n\n"  # a comment alone (a keep-alive)
            + b": "
            + long
            + b"\nid: "
            + long
            + b"\nevent: "
            + long
            + b"\ndata: "
            + LIST
            + b"\n\n"
            + b"event: reply\nid: 7\ndata: "
            + LIST
            + b"\n\n"
        )
        out = self._run([stream])
        assert len(out) < 1000 and out.count(b"echo") == 2 and b"secret" not in out
        assert out.startswith(b":\n\n") and b"event: reply" not in out
        assert out.count(b"id: bound-") == 1 and b"id: bound-7\n" in out

    def test_a_key_spelled_with_escapes_is_still_a_tools_list(self) -> None:
        escaped = LIST.replace(b'"tools"', b'"tool\\u0073"')
        assert b"secret" not in self._run([b"data: " + escaped + b"\n\n"])

    @pytest.mark.parametrize(
        "data",
        [
            b'{"result":{"tools":[]},"result":{"tools":[{"name":"secret"}]}}',  # duplicate keys
            b'{"result":{"tools":[{"name":"secret","x":' + b"[" * 5000 + b"]" * 5000 + b"}]}}",
            b'{"result":{"tools":[{"name":"secret"}]}',  # cut short
        ],
    )
    def test_unreadable_tools_data_is_dropped(self, data: bytes) -> None:
        assert filtered(data, _View()) is DROP
        assert b"secret" not in self._run([b"id: 1\ndata: " + data + b"\n\n"])

    def test_an_answer_nested_past_the_parsers_depth_is_no_answer(self) -> None:
        """msgspec raises RecursionError, not a decode error, past its depth: an upstream's
        answer so deep failed the request it came on with an internal error (wave 40)."""
        deep = b'{"jsonrpc":"2.0","id":1,"result":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
        assert answered_id(deep) is NO_ID and not carries_id(deep)
        assert answer_alone(b"event: message\ndata: " + deep, 1) is None
        assert filtered(deep, _View()) is DROP

    def test_an_event_left_unfinished_is_not_passed_on(self) -> None:
        assert self._run([b"data: " + LIST]) == b""

    @pytest.mark.parametrize(
        ("given", "passed"),
        [(b"0", b"retry: 1000"), (b"250", b"retry: 1000"), (b"5000", b"retry: 5000"),
         (b"9" * 40, b"retry: 3600000"), (b"-1", None), (b"soon", None)],
    )  # fmt: skip
    def test_the_reconnection_delay_asked_of_a_client_is_bounded(
        self, given: bytes, passed: bytes | None
    ) -> None:
        """``retry: 0`` on a stream that ended without its answer: the Python SDK resumed it
        at once, for good, 138 times a second through the gateway (red-team wave 41)."""
        out = self._run([b"id: 1\nretry: " + given + b"\ndata: \n\n"])
        retries = [line for line in out.split(b"\n") if line.startswith(b"retry")]
        assert retries == ([passed] if passed else [])

    def test_a_batch_on_a_stream_is_one_event_a_message(self) -> None:
        """A batch (2025-03-26) in one event failed the Python SDK's call: each message is
        its own event, through the view, the event's id with the last."""
        note = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":1}}'
        batch = b"[" + note + b"," + LIST + b"]"
        out = self._run([b"id: 9\nevent: message\ndata: " + batch + b"\n\n"])
        events = [e for e in out.split(b"\n\n") if e]
        assert len(events) == 2 and b"id: bound-9" in events[1] and b"id:" not in events[0]
        data = [json.loads(e.split(b"data: ", 1)[1]) for e in events]
        assert data[0]["method"] == "notifications/message"
        assert [t["name"] for t in data[1]["result"]["tools"]] == ["echo"]

    def test_a_long_batch_or_a_batch_in_a_batch_is_dropped(self) -> None:
        """A batch is split without being built (one event of 100,000 tiny messages held the
        loop for 9 s); past 64 messages it is dropped, and a batch in a batch (no client
        reads one) is left out (red-team wave 42)."""
        note = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":1}}'
        many = b"[" + b",".join([note] * (MAX_BATCH + 1)) + b"]"
        assert self._run([b"id: 1\ndata: " + many + b"\n\n"]) == b""
        inner = b"[" + note + b"]"
        out = self._run([b"id: 2\ndata: [" + inner + b"," + note + b"]\n\n"])
        assert out == b"id: bound-2\ndata: " + note + b"\n\n"

    def test_a_batch_over_several_data_lines_comes_one_line_a_message(self) -> None:
        """A batch written over several ``data:`` lines (legal SSE, joined with line ends)
        was cut into messages that kept their line ends: the client read ``data: {`` alone
        (red-team wave 43). A batch msgspec will not read (``NaN``) is mended, not dropped."""
        note = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":1}}'
        answer = b'{"jsonrpc":"2.0","id":7,"result":{"content":[],"x":NaN}}'
        for batch in (b"[\n" + note + b",\n" + answer.replace(b"NaN", b"1") + b"\n]",
                      b"[" + note + b"," + answer + b"]"):  # fmt: skip
            lines = b"\n".join(b"data: " + line for line in batch.split(b"\n"))
            out = self._run([b"id: 3\n" + lines + b"\n\n"])
            data = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: ")]
            found = [json.loads(d, parse_constant=pytest.fail) for d in data]
            assert [m.get("method") for m in found] == ["notifications/message", None]
            assert found[1]["id"] == 7 and found[1]["result"]["x"] in (1, None)

    def test_what_cannot_be_mended_cheaply_passes_as_it_came(self) -> None:
        """Mending walks every value: one nested 2,000 deep failed with an internal error,
        and one with a 5,000-digit integer beside the word "NaN" was refused (red-team wave
        42). Such a message is passed as it came, as before mending."""
        data = b"[" + b"9" * 5000 + b',"NaN"]'  # more digits than Python reads
        message = b'{"jsonrpc":"2.0","id":1,"result":{"x":' + data + b"}}"
        assert filtered(message, _View()) is None

    @pytest.mark.parametrize("odd", [b"NaN", b'"\\ud800"'], ids=["nan", "lone-surrogate"])
    def test_what_no_quick_read_takes_past_the_mending_bound_is_dropped(self, odd: bytes) -> None:
        """A message past what is mended that msgspec cannot read (``NaN``, a lone
        surrogate) was passed as it came: the Python SDK failed on a lone surrogate, and on
        the call whose stream it came on, its own answer good or not (red-team wave 52); the
        TypeScript SDK on ``NaN``. It is no message any client reads whole: dropped. Python's
        parser is not run on it either (a 30 MiB answer of ``NaN`` held the loop 13 s)."""
        for kind in (b'"method":"notifications/message","params"', b'"id":1,"result"'):
            message = b'{"jsonrpc":"2.0",' + kind + b':{"x":[' + b"1," * 140_000 + odd + b"]}}"
            assert len(message) > MAX_MENDED_BYTES
            assert filtered(message, _View()) is DROP
        rewriter = SseRewriter(_View(), awaited=1)
        out = rewriter.feed(b"id: 1\ndata: " + message + b"\n\n") + rewriter.close()
        assert out == b"" or b"ud800" not in out
        assert rewriter.lost_answer  # the answer it was: the call is told, not left waiting

    def test_a_notice_longer_than_a_python_client_reads_is_dropped(self) -> None:
        """The Python SDK's client ends a stream on an event past 1 MiB, and fails the call on
        it: a 2 MiB log line did (red-team wave 52). A notice or a server's request that long
        is dropped; an answer that long is the call's, and goes on."""
        data = b'{"data":"' + b"x" * MAX_NOTICE_BYTES + b'"}'
        notice = b'{"jsonrpc":"2.0","method":"notifications/message","params":' + data + b"}"
        answer = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"structuredContent":' + data
        answer += b"}}"
        out = self._run([b"data: " + notice + b"\n\n", b"data: " + answer + b"\n\n"])
        assert b"notifications/message" not in out and out.count(b"x" * 1000) > 900

    def test_an_answer_too_large_to_read_for_its_shape_is_refused(self) -> None:
        """``NaN`` stops the quick read of a whole answer's shape, and one past what is read
        whole cannot be told from a notice given as the answer (red-team wave 44): refused,
        as no client would read it anyway."""
        message = b'{"jsonrpc":"2.0","id":1,"result":{"x":[' + b"NaN," * 100_000 + b"0]}}"
        assert filtered(message, _View(), answer=True) is DROP
        digits = b'{"jsonrpc":"2.0","id":1,"result":{"x":[' + b"9" * 5000 + b',"NaN"]}}'
        assert filtered(digits, _View(), answer=True) is None

    @pytest.mark.parametrize("depth", [600, 1250, 2400])
    def test_deep_nesting_never_fails_the_mending(self, depth: int) -> None:
        """With the recursion limit cel-python sets (2,500), a message nested 1,250 deep
        parsed, then failed in the mending: an internal error (red-team wave 42)."""
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(2500)
        try:
            for inner in (b"NaN", b'"\\ud800"'):
                deep = b"[" * depth + inner + b"]" * depth
                message = b'{"jsonrpc":"2.0","id":1,"result":{"x":' + deep + b"}}"
                out = filtered(message, _View(), answer=True)
                assert out is None or out is DROP or json.loads(out)["id"] == 1
        finally:
            sys.setrecursionlimit(limit)

    @pytest.mark.parametrize(
        "data",
        [
            b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}',
            b'{"jsonrpc":"2.0","id":"srv-1","method":"evil/unclassified","params":{}}',
            b'[{"jsonrpc":"2.0","id":1,"result":{}}]',
        ],
    )
    def test_a_requests_whole_answer_is_an_answer(self, data: bytes) -> None:
        """A notice, a server's request or a batch given as a call's JSON answer was passed
        on, and both SDKs waited for the call's answer for good (red-team wave 41)."""
        assert filtered(data, _View(), answer=True) is DROP
        assert filtered(data, _View()) is not DROP  # on a stream, each has its place

    def test_what_json_and_utf8_have_not_is_mended(self) -> None:
        """``NaN`` and infinities (the TypeScript SDK failed on them) become null, as the
        Python SDK's servers write them; a lone surrogate (the Python SDK failed) U+FFFD."""
        data = (
            b'{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"a":NaN,"b":[-Infinity,'
            b'1e999,1.5]},"content":[{"type":"text","text":"x\\ud83dy \\ud83d\\ude00"}]}}'
        )
        out = filtered(data, _View(), answer=True)
        assert isinstance(out, bytes) and out is not DROP
        strict = json.loads(out.decode("utf-8"), parse_constant=lambda c: pytest.fail(c))
        assert strict["result"]["structuredContent"] == {"a": None, "b": [None, None, 1.5]}
        assert strict["result"]["content"][0]["text"] == "x\ufffdy \U0001f600"
        plain = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"NaN"}]}}'
        assert json.loads(filtered(plain, _View()) or b"") == json.loads(plain)

    def test_data_split_over_lines_is_one_message(self) -> None:
        half = LIST.index(b'{"name":"echo"}')  # a line break is JSON white space here
        out = self._run([b"data: " + LIST[:half] + b"\ndata: " + LIST[half:] + b"\n\n"])
        assert b"secret" not in out

    def test_a_batch_of_answers_is_filtered_each(self) -> None:
        out = self._run([b"data: [" + LIST + b"," + LIST + b"]\n\n"])
        assert b"secret" not in out and out.count(b"echo") == 2


# --------------------------------------------------------------------------- fuzz


def _literal(log: Path) -> contextlib.AbstractContextManager[PeerProcess]:
    return literal_upstream({"UPSTREAM_CALL_LOG": str(log)})


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, Path, httpx.Client]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    log = tmp / "calls.jsonl"
    policy = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n'
    with (
        _literal(log) as literal,
        run_gateway(tmp, policy, {"lit": {"url": literal.url}}) as gw,
        httpx.Client(timeout=10) as http,
    ):
        yield gw, log, http


METHODS = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "Tools/call",
        "tools/call ",
        "notifications/cancelled",
        "notifications/tools/call",
        "ping",
        "initialize",
        "resources/read",
        "x",
    ]
)
NAMES = st.sampled_from(["echo", "delete_item", "write_file", "echo\x00", "*", "ech\u043e"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
IDS = st.none() | st.integers(min_value=-(2**60), max_value=2**60) | st.text(max_size=4) | SCALARS
PARAMS = st.fixed_dictionaries(
    {"name": NAMES},
    optional={
        "arguments": st.dictionaries(st.text(max_size=4), SCALARS, max_size=3),
        "_meta": st.just({"io.modelcontextprotocol/protocolVersion": "2026-07-28"}),
    },
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "1.0"]),
        "id": IDS,
        "method": METHODS,
        "params": PARAMS | SCALARS,
        "result": st.just({}),
        "error": st.just({"code": 1, "message": "x"}),
        "extra": SCALARS,
    },
)
BODIES = (
    MESSAGES.map(lambda m: json.dumps(m).encode())
    | st.lists(MESSAGES, max_size=2).map(lambda m: json.dumps(m).encode())
    | st.binary(max_size=64)
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain", "application/json; x"]),
        "mcp-method": METHODS.filter(lambda m: m == m.strip()),
        "mcp-name": NAMES.filter(lambda n: "\x00" not in n and n.isascii()),
        "mcp-protocol-version": st.sampled_from(["2025-11-25", "2026-07-28", "bogus"]),
        "accept": st.sampled_from([ACCEPT, "text/event-stream", "*/*"]),
        "expect": st.just("100-continue"),
        "last-event-id": st.text(alphabet="abc.0123", max_size=8),
    },
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=BODIES, headers=HEADERS, verb=st.sampled_from(["POST", "POST", "POST", "GET", "DELETE"])
)
def test_fuzz_never_errs_and_never_leaks(
    fuzzed: tuple[GatewayProcess, Path, httpx.Client],
    body: bytes,
    headers: dict[str, str],
    verb: str,
) -> None:
    """No 5xx, an answer within the client's timeout, and (read from the upstream that would
    run them) no call but ``echo`` ever arrived, notifications included."""
    gw, log, http = fuzzed
    content = body if verb == "POST" else None
    resp = http.request(verb, gw.url("lit"), content=content, headers=headers)
    assert resp.status_code < 500, (resp.status_code, resp.text)
    ran = {c["tool"] for c in calls_in(log)}
    assert ran <= {"echo"}, ran
