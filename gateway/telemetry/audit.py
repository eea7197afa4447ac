"""Decision records and logging configuration (structlog), in one place.

One JSON line per decision, event ``policy.decision``. Arguments appear only as a sha256
digest of their canonical JSON unless ``audit.log_arguments`` is on. ``latency_ms`` is the
gateway's own time; a call held for a human also has ``approval_wait_ms`` (the records are
written by ``gateway.pipeline.admission.admit``, once per call).

The record is on every call, so it has a fast path: with JSON logs at INFO or below,
``configure_logging`` installs a ``_RecordWriter`` that encodes the record once (msgspec,
straight into a buffer) and hands the line to the ``LineSink``, the same line structlog's
processors would make (``event``, ``level``, ``timestamp`` and any bound context variables)
at a fraction of their cost. Otherwise (console logs, structlog never configured, tests that
capture logs) the record goes through structlog.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
import structlog

from gateway.policy.model import Call, Decision
from gateway.policy.secrets import mask_args

log = structlog.get_logger("celgate")


class LineSink:
    """Log lines to a binary stream, each written whole and at once, under a lock (other
    threads log too).

    Lines used to be joined and written once per event-loop pass (``call_soon``). Measured
    served, that turn of the loop cost a call 30 µs of CPU and of latency with one client, and
    saved nothing with sixteen (a write of a line costs about a microsecond).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        # stderr closed under us: there is no one left to tell
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(line)
            self.stream.flush()

    def flush(self) -> None:
        """Called by structlog after every line: the line is already written."""

    def flush_now(self) -> None:
        """Whatever the stream itself still buffers (every line was flushed as written)."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def _json_fallback(obj: Any) -> Any:
    return repr(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_json_fallback)


def _render_json(event_dict: Any, **_: Any) -> bytes:
    try:
        return _ENCODER.encode(event_dict)
    except UnicodeEncodeError:  # a lone surrogate a peer sent: written escaped, never lost
        return _escaped(event_dict)


def _escaped(fields: Any) -> bytes:
    return json.dumps(fields, default=repr, separators=(",", ":")).encode()


_SINK: LineSink | None = None
_WRITER: _RecordWriter | None = None


class _RecordWriter:
    """Writes a decision record as the JSON line structlog would, without its processors."""

    __slots__ = ("_sink",)

    _TAIL = b',"event":"policy.decision","level":"info","timestamp":"'

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def write(self, fields: dict[str, Any], stamp: str) -> None:
        context = structlog.contextvars.get_contextvars()
        line = bytearray()
        record = {**context, **fields} if context else fields
        try:
            _ENCODER.encode_into(record, line)
        except UnicodeEncodeError:
            line = bytearray(_escaped(record))
        del line[-1]  # the closing brace: the fields are never empty
        line += self._TAIL
        line += stamp.encode()  # digits and punctuation only: nothing to escape
        line += b'"}\n'
        self._sink.write(line)  # type: ignore[arg-type]  # joined with bytes by the sink


class _StdlibLines(logging.Handler):
    """What libraries log through ``logging`` (uvicorn's "Invalid HTTP request received.",
    one a connection any client can make), as JSON lines on the same sink: they were plain
    text in the middle of the JSON stream. One message (by logger and text) is written at
    most ``PER_SECOND`` times a second; the rest are counted, and the next one written says
    how many were left out."""

    PER_SECOND = 10

    def __init__(self, sink: LineSink) -> None:
        super().__init__(logging.INFO)
        self.sink = sink
        self._second = -1
        self._counts: dict[tuple[str, str], int] = {}
        self._left_out: dict[tuple[str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name, str(record.msg)[:200])
            second = int(record.created)
            if second != self._second:
                self._second, self._counts = second, {}
            if key not in self._counts and len(self._counts) >= 1000:
                key = ("*", "*")  # many messages in one second: counted together
            if key not in self._left_out and len(self._left_out) >= 1000:
                self._left_out.clear()
            seen = self._counts.get(key, 0) + 1
            self._counts[key] = seen
            if seen > self.PER_SECOND:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return
            fields: dict[str, Any] = {
                "event": record.getMessage(),
                "logger": record.name,
                "level": record.levelname.lower(),
                "timestamp": _CLOCK.iso()[:-6] + "Z",
            }
            left_out = self._left_out.pop(key, 0)
            if left_out:
                fields["left_out"] = left_out
            if record.exc_info:
                fields["exception"] = logging.Formatter().formatException(record.exc_info)
            self.sink.write(_render_json(fields) + b"\n")
        except Exception:  # a log line must never take a request down
            self.handleError(record)


def flush_logs() -> None:
    """Flush what the log stream still buffers (at shutdown)."""
    if _SINK is not None:
        _SINK.flush_now()


def configure_logging(*, json_logs: bool | None = None, level: int = logging.INFO) -> None:
    """JSON lines when not on a TTY (or when asked); the console renderer otherwise."""
    global _SINK, _WRITER
    as_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    logger_factory: Any
    if as_json:
        renderer: Any = structlog.processors.JSONRenderer(serializer=_render_json)
        if _SINK is None or _SINK.stream is not sys.stderr.buffer:
            _SINK = LineSink(sys.stderr.buffer)
        logger_factory = structlog.BytesLoggerFactory(file=_SINK)  # type: ignore[arg-type]
        _WRITER = _RecordWriter(_SINK) if level <= logging.INFO else None
    else:
        _WRITER = None
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # ``log.exception``'s traceback as text (the JSON renderer wrote "exc_info": true)
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibLines)]:
        root.removeHandler(handler)
    if as_json and _SINK is not None:  # libraries' lines as JSON too (uvicorn's, asyncio's)
        root.addHandler(_StdlibLines(_SINK))
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    # Libraries log every request at INFO; the decision record is the log.
    for noisy in ("httpx", "httpx2", "httpcore", "aiohttp.access", "uvicorn.access", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) makes, without
# building an encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def args_digest(args: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the arguments: it binds an approval to the exact call,
    so it must not depend on how the caller ordered or spaced them."""
    return _digest(_CANONICAL.encode(args))


def _digest(canonical: str) -> str:
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class _UtcClock:
    """``datetime.now(UTC).isoformat()`` for every record, with the date and time of day
    formatted once per second rather than once per call."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self) -> str:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._prefix, self._second = moment.strftime("%Y-%m-%dT%H:%M:%S"), second
        micros = ns // 1000
        if micros == 0:  # as isoformat(): no fraction on a whole second
            return self._prefix + "+00:00"
        return f"{self._prefix}.{micros:06d}+00:00"


_CLOCK = _UtcClock()


def new_decision_id() -> str:
    """128 random bits, 32 hex digits like a uuid4. Every agent is shown its calls' ids: a
    per-process prefix and a counter (as they were) told one agent how many calls the others
    made between two of its own, and which replica served it (red-team wave 32)."""
    return os.urandom(16).hex()


#: With ``audit.log_arguments`` on, the records kept in memory (the admin API's, the console's
#: live feed: 500 of them) hold arguments up to this many characters of JSON; larger ones are
#: in the log line only (500 bodies of 4 MB would be 2 GB held).
MAX_KEPT_ARGS = 64 * 1024
#: ... and of at most this many objects and lists (counted as their brackets, strings'
#: included: over, never under): 64 KiB of ``[],`` is 21,000 lists, 1.4 MB kept a record.
MAX_KEPT_CONTAINERS = 1000


class DecisionLog:
    """Writes decision records and keeps the most recent ones for the admin API."""

    def __init__(self, *, log_arguments: bool = False, keep: int = 500) -> None:
        self.log_arguments = log_arguments
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(
        self,
        decision_id: str,
        call: Call,
        decision: Decision,
        latency_ms: float,
        secret: tuple[str, ...] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        stamp = _CLOCK.iso()
        canonical = _CANONICAL.encode(call.args)
        shown = mask_args(dict(call.args), secret) if secret else None
        if shown == call.args:
            shown = None  # no secret in this call: its arguments as they are
        # A digest of the real arguments beside the others' values would give a short secret
        # (a PIN) to whoever hashes guesses: with a secret in the call, the masked ones'.
        digested = canonical if shown is None else _CANONICAL.encode(shown)
        fields: dict[str, Any] = {
            "decision_id": decision_id,
            "time": stamp,
            "grant": call.identity.grant,
            "agent": call.identity.agent,
            # how the agent proved it: key, token, introspection or anonymous (never the token)
            "auth": getattr(call.identity, "auth", "key"),
            "session": call.session,
            "server": call.server,
            "tool": call.tool,
            "args_digest": _digest(digested),
            "effect": decision.effect,
            "rule": decision.rule,
            "reason": decision.reason,
            "revision": decision.revision,
            "latency_ms": round(latency_ms, 3),
        }
        if self.log_arguments:  # the values a rule marks secret never reach the log
            fields["args"] = shown if shown is not None else dict(call.args)
        if decision.error:
            fields["error"] = decision.error
        if decision.error_detail:
            fields["error_detail"] = decision.error_detail
        if decision.expression:
            fields["expression"] = decision.expression
        state = decision.limit_state
        if state is not None:
            fields["limits"] = {
                "remaining": dict(state.remaining),
                "refused_by": state.refused_by,
                "retry_after": state.retry_after,
                "backend_error": state.backend_error,
                "failed_open": state.failed_open,
            }
        if decision.approval_id:
            fields["approval_id"] = decision.approval_id
        if decision.shadow:
            fields["shadow"] = [s.to_dict() for s in decision.shadow]
        if extra:
            fields.update(extra)
            if extra.get("args_omitted") and "args" in fields:  # not read: not "none given"
                fields["args"] = {"omitted": "refused before its arguments were read"}
        kept = fields
        if "args" in fields and (
            len(canonical) > MAX_KEPT_ARGS
            or canonical.count("[") + canonical.count("{") > MAX_KEPT_CONTAINERS
        ):  # the line has them all
            kept = {**fields, "args": {"omitted": f"{len(canonical)} characters of JSON"}}
        self.recent.append(kept)
        writer = _WRITER
        if writer is not None:
            writer.write(fields, stamp[:-6] + "Z")
        else:
            log.info("policy.decision", **fields)
        return fields
