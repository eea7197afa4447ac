"""JSON-RPC messages as the relay sees them: parsed once, strictly, and answered in one shape.

Bodies with duplicate object keys are rejected: JSON parsers disagree on which copy wins, so a
body could mean one tool to the gateway and another to the upstream.
"""

from __future__ import annotations

import gc
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import msgspec

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UPSTREAM_UNAVAILABLE = -32001  # server-defined range: the upstream is down or failed
SESSION_NOT_FOUND = -32002
POLICY_REFUSED = -32003  # a task-augmented call the policy refused (edge/replies.denial)

MODERN_VERSIONS = frozenset({"2026-07-28"})
#: Versions of the handshake era (initialize, Mcp-Session-Id).
HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
#: The methods whose 2026-07-28 results carry ``ttlMs`` and ``cacheScope``.
CACHEABLE_METHODS = frozenset(
    {
        "prompts/list",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "server/discover",
        "tools/list",
    }
)
PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"


class BadMessage(Exception):
    """A body the relay refuses, with the JSON-RPC code and HTTP status to answer it with."""

    def __init__(
        self,
        code: int,
        message: str,
        status: int = 400,
        msg_id: Any = None,
        close: bool = False,
        allow: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.msg_id = msg_id
        self.close = close  # the connection ends with the answer (a refusal before any caller)
        self.allow = allow  # a 405's Allow header: the methods the path takes (RFC 9110)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadMessage(PARSE_ERROR, f"duplicate key {key!r} in JSON object")
            seen.add(key)
    return out


def _not_json(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``, which Python's parser takes but JSON has not:
    a rule comparing such a number is false both ways (a limit on an amount is passed by
    ``NaN``), and an upstream's parser may read them otherwise or not at all."""
    raise BadMessage(PARSE_ERROR, f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A number with a fraction or an exponent, refused past a double's range (``1e999``
    would be read as infinity here, and as anything at all by another parser), and refused
    when it says more than a double holds: rules and the approval's digest read the double,
    and the upstream the text as sent, which a parser of exact decimals reads as another
    value (``100.000000000000001`` passed ``args.amount > 100.0`` as 100.0, and ``1e-400``
    was 0: red-team wave 59)."""
    value = float(text)
    if math.isinf(value):
        raise BadMessage(PARSE_ERROR, "a number is out of range")
    # Up to 16 characters with a point or an exponent: at most 15 digits, which a double
    # holds exactly, unless it is (or fell to) zero or a subnormal number.
    if len(text) <= 16 and abs(value) >= _SMALLEST_NORMAL:
        return value
    if value == 0.0 and text.lstrip("-0.")[:1] in _ZERO_ENDS:  # an exact zero (0e0, -0.00)
        return value
    _SLOW_READS[0] += 1
    if _SLOW_READS[0] > MAX_SLOW_NUMBERS:
        # Each costs microseconds more than the same bytes of any JSON: a body of a million
        # held every other caller 0.7 s (red-team wave 69). No client sends so many.
        msg = f"more than {MAX_SLOW_NUMBERS} numbers with long fractions or below 1e-307"
        raise BadMessage(PARSE_ERROR, msg)
    shortest = repr(value)  # as JSON encoders write a double (most often the text itself)
    if shortest != text and Decimal(text) != Decimal(shortest):
        raise BadMessage(
            PARSE_ERROR, "a number has more precision than a double holds (write it shorter)"
        )
    return value


_SMALLEST_NORMAL = sys.float_info.min
_ZERO_ENDS = ("", "e", "E")  # what follows a zero's digits: nothing, or its exponent
#: Numbers of one text ``_finite`` reads the slow way (zeros aside), at most; counted in
#: ``_SLOW_READS`` from the start of each parse (``_decoded``: one at a time, on the loop).
MAX_SLOW_NUMBERS = 10_000
_SLOW_READS = [0]


#: Digits an integer in a request may have. Python converts up to 4,300, in time that grows
#: with the square of their number: 4 MiB of 4,299-digit integers took 0.15 s to read and
#: 0.3 s more to encode again (the record's digest), and an approval's preview held them
#: whole (red-team wave 41). 1,000 digits cost what the same bytes of any JSON do.
MAX_INT_DIGITS = 1000
#: A run of more digits than that, searched from a run's first digit only: ``\d{1001}``
#: was tried again at every digit, so runs of 1,000 digits cost k**2/2 steps each (4 MB of
#: them held the event loop for 19 s, every other client waiting: red-team wave 47). JSON's
#: digits are ASCII.
_LONG_DIGITS = re.compile(rf"(?<![0-9])[0-9]{{{MAX_INT_DIGITS + 1}}}")


def _bounded_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BadMessage(PARSE_ERROR, f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


# Made once: ``json.loads`` with hooks builds a decoder on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_not_json, parse_float=_finite
)
# ... and one that checks each integer's length, for a text with a long run of digits (a
# string's, maybe: only then is each integer given to a Python function).
_DIGITS_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_not_json,
    parse_float=_finite,
    parse_int=_bounded_int,
)

# A \uD800-\uDFFF escape: a surrogate, paired (fine) or lone (not text: refused).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_body(body: bytes) -> Any:
    """Parse a request body, rejecting invalid UTF-8, invalid JSON (``NaN``, the
    infinities and numbers past a double's range included), duplicate keys and strings that
    are not text (a lone surrogate cannot be encoded again, so no record or upstream could
    take it)."""
    try:
        text = body.decode("utf-8")
        value = _decoded(text)
    except UnicodeDecodeError:
        raise BadMessage(PARSE_ERROR, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadMessage(PARSE_ERROR, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise BadMessage(PARSE_ERROR, "JSON nested too deeply") from None
    except TooManyContainers as exc:
        raise BadMessage(PARSE_ERROR, str(exc)) from None
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise BadMessage(PARSE_ERROR, "a number has too many digits") from None
    if _SURROGATE_ESCAPE.search(body) is not None and not _all_text(value):
        raise BadMessage(PARSE_ERROR, "a string holds a lone UTF-16 surrogate")
    return value


#: Past this many characters a body is parsed with the cyclic garbage collector paused.
GC_PAUSE_CHARS = 64 * 1024


def loads(data: str | bytes, **options: Any) -> Any:
    """``json.loads``, a large text with the garbage collector paused (see ``_gc_paused``):
    for every JSON a peer sends that is parsed on the loop (an upstream's answers, a stdio
    child's lines, the bridge's copy of a body)."""
    return _gc_paused(len(data), json.loads, data, **options)


#: Past this many bytes, a peer's line is read by msgspec (see ``loads_line``).
FAST_LOADS_BYTES = 1024 * 1024


def loads_line(data: bytes) -> Any:
    """``loads`` for a message that is only routed on (a stdio child's line): one past
    ``FAST_LOADS_BYTES`` is read by msgspec, which builds its values about ten times faster
    than Python's parser (a stdio server's unasked line of 60 MiB of numbers held the loop
    every caller shares 7 s: red-team wave 51), within the same bound on objects and lists.
    Both keep a repeated key's last value. Raises ``ValueError`` for anything not read as
    JSON (msgspec refuses ``NaN`` and lone surrogates, as no long line is read twice)."""
    if len(data) <= FAST_LOADS_BYTES:
        try:
            return loads(data)
        except RecursionError as exc:
            raise ValueError("nested too deeply") from exc
    try:
        return _gc_paused(len(data), _FAST_DECODE, data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError("not JSON read so") from exc


_FAST_DECODE = msgspec.json.Decoder().decode


def _decoded(text: str) -> Any:
    """A request body's text parsed, by the decoder made at import."""
    decoder = _DIGITS_DECODER if _LONG_DIGITS.search(text) else _DECODER
    _SLOW_READS[0] = 0
    return _gc_paused(len(text), decoder.decode, text)


#: Objects and lists one JSON text parsed on the loop may hold, at most (counted as the
#: brackets that open them, strings' included: over, never under). Each is a Python object
#: of 60 bytes or more: 33 MiB of ``{},`` parsed to 0.9 GiB, within every byte bound
#: (red-team wave 35). A million is about 100 MB at most.
MAX_PARSED_CONTAINERS = 1_000_000


class TooManyContainers(ValueError):
    """A JSON text of more objects and lists than one parse may build."""


def count_containers(data: str | bytes) -> int:
    """The brackets that may open an object or a list in ``data`` (strings' counted too)."""
    if isinstance(data, str):
        return data.count("{") + data.count("[")
    return data.count(b"{") + data.count(b"[")


# A JSON string, escapes and all (atomic: linear however long).
_STRING_TEXT = re.compile(r'"(?>[^"\\]+|\\.)*"', re.DOTALL)
_STRING_BYTES = re.compile(rb'"(?>[^"\\]+|\\.)*"', re.DOTALL)


def _over_containers(data: str | bytes) -> bool:
    """Whether ``data`` opens more than ``MAX_PARSED_CONTAINERS`` objects and lists: counted
    fast with strings' brackets too, and, only when that count is over, again without
    what is inside strings (a data file of ``[[1.5,2.5],...]`` sent as text is one string)."""
    if count_containers(data) <= MAX_PARSED_CONTAINERS:
        return False
    if isinstance(data, str):
        return count_containers(_STRING_TEXT.sub("", data)) > MAX_PARSED_CONTAINERS
    return count_containers(_STRING_BYTES.sub(b"", data)) > MAX_PARSED_CONTAINERS


def _gc_paused(size: int, parse: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """``parse(*args, **options)``, with the garbage collector paused when ``size`` is large.
    Python's collector runs every 700 new containers and walks every young one: a body of
    nothing but tiny lists and objects (``[[],[],...]``) cost 0.5 to 1.2 s of CPU a MiB on
    the loop every caller shares, five to twelve times the same size in numbers; paused,
    about 0.1 s. A large text is refused (:class:`TooManyContainers`, a ``ValueError`` as
    invalid JSON is) when it could hold more than ``MAX_PARSED_CONTAINERS``."""
    if size < GC_PAUSE_CHARS:
        return parse(*args, **options)
    if size > MAX_PARSED_CONTAINERS and _over_containers(args[0]):
        raise TooManyContainers(
            f"the JSON holds more than {MAX_PARSED_CONTAINERS} objects and lists"
        )
    if not gc.isenabled():
        return parse(*args, **options)
    gc.disable()
    try:
        return parse(*args, **options)
    finally:
        gc.enable()


def _all_text(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


#: Request methods a client may send, in both protocol eras and the spec's extensions (tasks,
#: subscriptions). Anything else is refused unless the operator lists it (``relay.extra_methods``).
CLIENT_REQUEST_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "subscriptions/listen",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "tasks/update",
    }
)
NOTIFICATION_PREFIX = "notifications/"
#: What a client may notify a server of, in both eras (the spec's ``ClientNotification``):
#: any other ``notifications/*`` a client sent was passed on (on ``/mcp``, to every server),
#: a shape nobody classified (red-team wave 62). ``relay.extra_methods`` adds others.
CLIENT_NOTIFICATION_METHODS = frozenset(
    {
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "notifications/tasks/status",
    }
)
#: What a server may send a client, in both eras and the spec's extensions: its requests
#: and its notifications. Anything else is dropped on its way to the client: a server could
#: otherwise call any handler a client's host registers, past the gateway's classification
#: (red-team wave 44).
SERVER_METHODS = frozenset(
    {
        "ping",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/tasks/status",
        "notifications/tasks",
        "notifications/elicitation/complete",
        "notifications/subscriptions/acknowledged",
    }
)
#: Integer ids a JavaScript peer cannot hold exactly (``JSON.parse`` rounds past 2**53).
MAX_SAFE_ID = 2**53 - 1
_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})

Kind = Literal["request", "notification", "response"]


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message from the client, classified: a request of a method the relay
    knows, a ``notifications/*`` notification, or an answer to a request the server sent."""

    raw: Mapping[str, Any]
    method: str | None
    msg_id: Any
    params: Mapping[str, Any]
    kind: Kind = "request"

    @property
    def is_request(self) -> bool:
        return self.kind == "request"

    @property
    def protocol_version(self) -> str | None:
        meta = self.params.get("_meta")
        if isinstance(meta, Mapping):
            version = meta.get(PROTOCOL_VERSION_META_KEY)
            return version if isinstance(version, str) else None
        return None


def echo_id(value: Any) -> Any:
    """An id fit to echo in an error: the request's own when it is one, else null."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value if not isinstance(value, int) or abs(value) <= MAX_SAFE_ID else None


#: Ids of requests the gateway makes itself (to servers, and to clients: in-band approvals).
#: A client's request may not take one; a client's answer to one of the gateway's requests
#: carries one.
RESERVED_ID_PREFIX = "celgate-"


def _reserved(msg_id: Any) -> bool:
    return isinstance(msg_id, str) and msg_id.startswith(RESERVED_ID_PREFIX)


def _check_id(value: Mapping[str, Any]) -> Any:
    """The message's id, which must survive a round trip through any JSON peer unchanged."""
    if "id" not in value:
        return None
    msg_id = value["id"]
    if isinstance(msg_id, bool) or not isinstance(msg_id, str | int):
        raise BadMessage(INVALID_REQUEST, "id must be a string or an integer")
    if isinstance(msg_id, int) and abs(msg_id) > MAX_SAFE_ID:
        raise BadMessage(INVALID_REQUEST, "integer id out of range (|id| must be below 2**53)")
    if isinstance(msg_id, str) and len(msg_id) > MAX_TOKEN_CHARS:  # kept while in progress
        raise BadMessage(INVALID_REQUEST, f"id longer than {MAX_TOKEN_CHARS} characters")
    return msg_id


#: A progress token or a cancelled request's id, at most this many characters (the gateway
#: keeps them while their request is in progress: a 1 MiB token a request was kept as much).
MAX_TOKEN_CHARS = 1024


def _is_token(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TOKEN_CHARS
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tokens(method: str, params: Mapping[str, Any], msg_id: Any) -> None:
    """What the gateway keys its own tables by, besides the id, must be what MCP says it is:
    a progress token or a cancelled request's id is a string or an integer, the ``_meta``
    protocol version a string (a list or an object there is no key for anything)."""
    meta = params.get("_meta")
    if meta is not None and not isinstance(meta, dict):
        raise BadMessage(INVALID_PARAMS, "_meta must be an object", msg_id=msg_id)
    meta = meta or {}
    if "progressToken" in meta and not _is_token(meta["progressToken"]):
        msg = f"progressToken must be a string (at most {MAX_TOKEN_CHARS}) or an integer"
        raise BadMessage(INVALID_PARAMS, msg, msg_id=msg_id)
    version = meta.get(PROTOCOL_VERSION_META_KEY)
    if version is not None and not isinstance(version, str):
        msg = "the _meta protocol version must be a string"
        raise BadMessage(INVALID_PARAMS, msg, msg_id=msg_id)
    named = {"notifications/cancelled": "requestId", "notifications/progress": "progressToken"}
    field = named.get(method)
    if field is not None and field in params and not _is_token(params[field]):
        msg = f"{field} must be a string (at most {MAX_TOKEN_CHARS}) or an integer"
        raise BadMessage(INVALID_PARAMS, msg, msg_id=msg_id)


#: The other spellings of MCP's parameters that the SDKs' models also read (pydantic, by
#: field name): the gateway reads MCP's own (``requestId``, ``_meta``), a server built on
#: such a model the other too. A cancel spelled ``request_id`` reached the server unseen by
#: the gateway's own bookkeeping (red-team wave 59); such a request is refused.
OTHER_SPELLINGS = {
    "meta": "_meta",
    "request_id": "requestId",
    "task_id": "taskId",
    "request_state": "requestState",
    "input_responses": "inputResponses",
    "progress_token": "progressToken",
    "protocol_version": "protocolVersion",
    "client_info": "clientInfo",
    "elicitation_id": "elicitationId",
    "uri_template": "uriTemplate",
    "model_preferences": "modelPreferences",
    "system_prompt": "systemPrompt",
    "include_context": "includeContext",
    "max_tokens": "maxTokens",
    "stop_sequences": "stopSequences",
    "tool_choice": "toolChoice",
    "requested_schema": "requestedSchema",
    "created_at": "createdAt",
    "last_updated_at": "lastUpdatedAt",
    "poll_interval": "pollInterval",
    "status_message": "statusMessage",
}


def _check_spelling(params: Mapping[str, Any], msg_id: Any) -> None:
    if OTHER_SPELLINGS.keys().isdisjoint(params):
        return
    other = next(k for k in params if k in OTHER_SPELLINGS)
    msg = f"params.{other} is not MCP's spelling: write {OTHER_SPELLINGS[other]}"
    raise BadMessage(INVALID_PARAMS, msg, msg_id=msg_id)


def classify(value: Any, extra_methods: frozenset[str] = frozenset()) -> Message:
    """Check the envelope of one message and say what it is; refuse every other shape.

    Batches were removed in 2025-06-18. A method without an id must be a notification
    (``notifications/*``): a ``tools/call`` "notification" would otherwise skip policy at a
    server that runs notifications as JSON-RPC says it may.
    """
    if isinstance(value, list):
        raise BadMessage(INVALID_REQUEST, "JSON-RPC batches are not supported")
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise BadMessage(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    msg_id = _check_id(value)
    unknown = value.keys() - _ENVELOPE
    if unknown:
        msg = f"unexpected member {sorted(unknown)[0]!r} in a JSON-RPC message"
        raise BadMessage(INVALID_REQUEST, msg, msg_id=msg_id)
    if "method" not in value:
        return _response(value, msg_id)
    method = value["method"]
    if not isinstance(method, str):
        raise BadMessage(INVALID_REQUEST, "method must be a string", msg_id=msg_id)
    if "result" in value or "error" in value:
        raise BadMessage(INVALID_REQUEST, "a request cannot carry a result", msg_id=msg_id)
    params = value.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadMessage(INVALID_REQUEST, "params must be an object", msg_id=msg_id)
    _check_tokens(method, params, msg_id)
    if method not in extra_methods:
        _check_spelling(params, msg_id)
    if _reserved(value.get("id")) or (
        method == "notifications/cancelled" and _reserved(params.get("requestId"))
    ):
        # The gateway's own requests to a server (its merged lists, probes) are under these
        # ids: a call that took one was given the answer to the gateway's tools/list, every
        # tool its policy hides (red-team wave 63).
        msg = f"ids starting with {RESERVED_ID_PREFIX!r} are the gateway's own"
        raise BadMessage(INVALID_REQUEST, msg, msg_id=msg_id)
    if "id" not in value:
        if not method.startswith(NOTIFICATION_PREFIX):
            msg = f"{method!r} without an id: only notifications/* may omit the id"
            raise BadMessage(INVALID_REQUEST, msg)
        if method not in CLIENT_NOTIFICATION_METHODS and method not in extra_methods:
            raise BadMessage(METHOD_NOT_FOUND, f"unknown notification {method!r}", status=400)
        return Message(value, method, None, params, "notification")
    if method not in CLIENT_REQUEST_METHODS and (
        method not in extra_methods or method.startswith(NOTIFICATION_PREFIX)
    ):
        raise BadMessage(METHOD_NOT_FOUND, "Method not found", status=200, msg_id=msg_id)
    return Message(value, method, msg_id, params, "request")


def _response(value: Mapping[str, Any], msg_id: Any) -> Message:
    """An answer to a request the server sent (elicitation, sampling, roots, ping)."""
    if "id" not in value:
        raise BadMessage(INVALID_REQUEST, "a message needs a method or an id")
    if "params" in value or ("result" in value) == ("error" in value):
        msg = "an answer carries exactly one of result and error"
        raise BadMessage(INVALID_REQUEST, msg, msg_id=msg_id)
    if "result" in value and not isinstance(value["result"], dict):
        raise BadMessage(INVALID_REQUEST, "result must be an object", msg_id=msg_id)
    error = value.get("error")
    if "error" in value and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and isinstance(error.get("message"), str)
    ):
        msg = "error must be an object with an integer code and a message"
        raise BadMessage(INVALID_REQUEST, msg, msg_id=msg_id)
    return Message(value, None, msg_id, {}, "response")


def error_body(msg_id: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}).encode()


def upstream_failure_status(msg_id: Any, status: int) -> int:
    """The HTTP status of a JSON-RPC error the gateway writes when an upstream failed (down,
    late, refusing the gateway's credentials, answering nonsense): 200 when it answers a
    request, so every client reads the error (the TypeScript SDK takes any other status for
    a failed transport and never reads the body); ``status`` when there is no request to
    answer (a GET stream, a notification), or when it is a 4xx the client must act on (an
    upstream's 404 for a session it lost: the client starts a new one)."""
    return 200 if msg_id is not None and status >= 500 else status


def result_body(msg_id: Any, result: Mapping[str, Any]) -> bytes:
    return json_bytes({"jsonrpc": "2.0", "id": msg_id, "result": result})


def json_bytes(value: Any, separators: tuple[str, str] | None = None) -> bytes:
    """JSON text in UTF-8 for a peer, mended (see ``mended``) when it holds what JSON or
    UTF-8 has not: ``NaN`` or an infinity (a number past a double's range read as one) was
    written as no JSON parser but Python's reads it, and a lone surrogate escaped as it came,
    which the Python SDK's client refused with the whole answer."""
    try:
        return json.dumps(
            value, ensure_ascii=False, separators=separators, allow_nan=False
        ).encode()
    except (UnicodeEncodeError, ValueError):
        pass
    try:
        return json.dumps(mended(value), ensure_ascii=False, separators=separators).encode()
    except RecursionError:  # nested past what the walk reaches: as it came, escaped
        return json.dumps(value, separators=separators).encode()


def needs_mending(data: bytes) -> bool:
    """Whether JSON bytes may hold what ``mended`` mends (a string's ``NaN`` too: then read
    and written again for nothing), looked for without reading them."""
    return b"NaN" in data or b"Infinity" in data or _SURROGATE_ESCAPE.search(data) is not None


def mended(value: Any) -> Any:
    """``value`` with ``NaN`` and the infinities as ``null`` (as the Python SDK's servers
    write them, through pydantic) and each lone surrogate in a string or a key as U+FFFD:
    what an upstream sent that a client of the other SDK could not read, made readable by
    both. Depth is bounded by the parser that built ``value``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k) if isinstance(k, str) else k: mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mended(item) for item in value]
    return value


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:  # paired surrogates (as Python's parser leaves them) kept
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
