"""Every Server-Sent Event to a caller, passed through that caller's view without buffering.

Events are emitted as soon as their blank line arrives. Each event's ``id:`` is replaced by an
id bound to the caller (see ``ClientView.wrap_event_id``), so ``Last-Event-ID`` resumption
works for the caller who received the event and for nobody else. Each event's data is offered
to the view's filter: an event whose message the filter leaves alone keeps its data bytes as
they came. Line ends may be CRLF, LF or CR, and an event may arrive split across chunks.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any, Protocol, cast

import msgspec
import structlog

from gateway.wire.jsonrpc import FAST_LOADS_BYTES, json_bytes, mended, needs_mending
from gateway.wire.jsonrpc import loads as json_loads

log = structlog.get_logger(__name__)

# Two line ends in a row. Atomic groups stop "\r\n" from also counting as "\r" then "\n".
EVENT_END = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
LINE = re.compile(rb"\r\n|\r|\n")
#: Whole events that dispatch nothing and set nothing: blank lines, comments, fields no
#: client reads (all but data, id and retry). A run of them is skipped in one match, its
#: first comment passed on for it: an upstream's 256 KiB of blank lines was 131,072
#: events, each split and rewritten in Python, and every other caller waited (red-team
#: wave 44).
QUIET_EVENTS = re.compile(
    rb"(?:(?:(?!(?:data|id|retry)[:\r\n])[^\r\n]++(?>\r\n|\r|\n))*+(?>\r\n|\r|\n))++"
)
#: The first comment of such a run, passed on for them all (a keep-alive, as it came).
_COMMENT = re.compile(rb"(?<![^\r\n]):[^\r\n]*")

BOM = b"\xef\xbb\xbf"

#: An upstream that never ends an event would make the rewriter hold its bytes forever.
MAX_EVENT_BYTES = 32 * 1024 * 1024
#: What the events not yet ended of every stream may hold together: past it, the stream whose
#: event grows fails (as one over ``MAX_EVENT_BYTES`` does), so upstreams that start large
#: events and never end them cannot hold ``MAX_EVENT_BYTES`` per stream on every connection.
MAX_ALL_PENDING_BYTES = 128 * 1024 * 1024


class StreamTooLarge(Exception):
    """An SSE event grew past ``MAX_EVENT_BYTES`` (or every stream's past
    ``MAX_ALL_PENDING_BYTES``) without ending."""


class View(Protocol):
    def wants(self, data: bytes) -> bool:
        """Whether a message's bytes could be something this view changes (read only then)."""

    def filter(self, message: Any) -> Any | None:
        """The message the caller may see, None when it may see it unchanged, or ``DROP``
        when it is not for this caller."""

    def wrap_event_id(self, event_id: bytes) -> bytes:
        """The event id the caller is given for the upstream's ``event_id``."""


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    return name, value.removeprefix(b" ") if colon else b""


#: A message on a stream that answers nothing (a notice, a server's request) and is longer
#: than this is dropped: the Python SDK's client ends a stream on an event past 1 MiB, failing
#: the call it carried (a log line of 2 MiB did: red-team wave 52).
MAX_NOTICE_BYTES = 1_000_000


def spliced_by(view: Any, data: bytes) -> bytes | None:
    """What ``view`` writes into ``data`` without reading it (its ``splice``), if it can."""
    splice = getattr(view, "splice", None)
    return cast(bytes | None, splice(data)) if splice is not None else None


def with_result_type(data: bytes) -> bytes | None:
    """One answer's text with ``"resultType":"complete"`` first in its result, written in
    without reading the rest (the envelope written anew: ``jsonrpc``, ``id``, ``result``);
    None when it is not one answer of a result object read so."""
    try:
        head = _head(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    unset = msgspec.UNSET
    if head.method is not unset or head.error is not unset or not head.id:
        return None
    if not isinstance(head.result, msgspec.Raw) or memoryview(head.result)[:1].tobytes() != b"{":
        return None
    rest = bytes(head.result)[1:].lstrip()
    told = b'"resultType":"complete"' + (b"" if rest.startswith(b"}") else b",")
    return b'{"jsonrpc":"2.0","id":' + bytes(head.id) + b',"result":{' + told + rest + b"}"


def names_a_method(data: bytes) -> bool:
    """Whether ``data`` is one message with a method (no answer), read quickly; False when it
    cannot be read so (the view's reading tells)."""
    try:
        return _head(data).method is not msgspec.UNSET
    except (msgspec.DecodeError, RecursionError):
        return False


#: A line longer than this that names no method is skimmed first, and dropped unbuilt when it
#: answers no request awaited: eight children writing stray answers of 999,000 bytes (each
#: 0.1 s of Python's parser) made every other caller's calls 90 times slower (wave 57).
MAX_UNSKIMMED_LINE = 64 * 1024


def wanted_line(data: bytes, awaited: Callable[[Any], bool], notice_limit: int) -> bool:
    """Whether a long message is read whole, told by one quick read of its members: an
    answer ``awaited`` takes (a result or an error under an id it awaits), a notice or a
    request of at most ``notice_limit`` bytes, or one that cannot be read so (the whole read
    tells). A long line that answers nothing was built whole only to be dropped: seconds of
    the loop every caller shares, and 1 GiB for 60 MiB of floats."""
    try:
        head = _head(data)
    except RecursionError:
        return True
    except msgspec.DecodeError:
        # One token msgspec refuses made a stray line of 40 MiB be built whole, every time
        # (red-team wave 58). Past FAST_LOADS_BYTES the whole read is msgspec's too, so the
        # line is no message; below, what Python's parser reads and msgspec does not (NaN,
        # Infinity, a lone surrogate's escape) is read as a number or a space here, only to
        # tell what the message is; what neither reads (bytes after it) is no message.
        readable = _python_only_read(data) if len(data) <= FAST_LOADS_BYTES else None
        if readable is None:
            return False
        try:
            head = _HEAD.decode(readable)
        except (msgspec.DecodeError, RecursionError):
            return False
    unset = msgspec.UNSET
    if head.method is not unset:
        return len(data) <= notice_limit
    if (head.result is unset and head.error is unset) or not head.id:
        return False
    if len(head.id) > MAX_ID_BYTES:
        return False
    try:
        return awaited(msgspec.json.decode(head.id))
    except msgspec.DecodeError:
        return True


#: A lone surrogate's escape (or half of a pair), which msgspec refuses and Python reads.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _python_only_read(data: bytes) -> bytes | None:
    """``data`` with what Python's JSON parser reads and msgspec's does not written as what
    msgspec reads (of the same length: ``NaN`` a number, a surrogate's escape a space's),
    or None when it holds none of those."""
    read = data.replace(b"NaN", b"0.0") if b"NaN" in data else data
    read = read.replace(b"Infinity", b"0.000000") if b"Infinity" in read else read
    read = _SURROGATE.sub(rb"\\u0020", read) if b"\\u" in read else read
    return None if read is data else read


def event_id(event: bytes) -> bytes | None:
    """The id field of one whole event, as it came; None when it has none (or one too long
    to resume from)."""
    found = None
    for line in LINE.split(event):
        if line[:2] == b"id":
            name, value = _field(line)
            if name == b"id" and resumable_id(value):
                found = value
    return found


def rewrite_event(
    event: bytes, view: View, dropped: Callable[[bytes], None] | None = None
) -> bytes:
    """One whole event (with its closing blank line) as the caller receives it; ``dropped``
    is told the data of a message the view dropped."""
    lines = LINE.split(event)
    data: list[bytes] = []
    out: list[bytes] = []
    data_at = -1
    for line in lines:
        if not line:
            continue
        name, value = _field(line)
        if name == b"data":
            data.append(value)
            if data_at < 0:
                data_at = len(out)
                out.append(b"")
        elif name == b"id":
            if not value:
                out.append(b"id:")
            elif resumable_id(value):  # (another: no resumption from it)
                out.append(b"id: " + view.wrap_event_id(value))
        elif name == b"retry":
            if value.isdigit():  # (another value is ignored by clients: left out)
                out.append(b"retry: %d" % min(max(int(value[:10]), MIN_RETRY_MS), MAX_RETRY_MS))
        elif name == b"event":
            if value == b"message":  # another type's data went to no client's reader, and
                out.append(line)  # an answer under it was lost (it goes as a message now)
        elif not name:
            out.append(keep_alive(line))
        # any other field is left out: clients ignore it, unless they read it otherwise
    if data_at >= 0:
        joined = b"\n".join(data)
        if _OPENS_BATCH.match(joined):
            return _batch_events(joined, out, data_at, view, dropped)
        out[data_at] = no_other_breaks(b"data: " + b"\ndata: ".join(data))
        if len(joined) > MAX_NOTICE_BYTES and names_a_method(joined):
            return b""  # a notice or a request no client's stream would survive: dropped
        changed = filtered(joined, view)
        if changed is DROP:
            if dropped is not None:
                dropped(joined)
            return b""
        if changed is not None:
            out[data_at] = b"data: " + one_line(changed)
    return b"\n".join(out) + b"\n\n" if out else b""


DROP = b"\x00drop"

#: The reconnection delay a stream may ask its client for, in milliseconds: an upstream's
#: ``retry: 0`` on a stream that ended without its answer had the Python SDK resume it at
#: once, for good, 138 times a second through the gateway (red-team wave 41).
MIN_RETRY_MS = 1000
MAX_RETRY_MS = 3_600_000
_OPENS_BATCH = re.compile(rb"[ \t\r\n]*\[")


def _batch_events(
    data: bytes,
    fields: list[bytes],
    data_at: int,
    view: View,
    dropped: Callable[[bytes], None] | None = None,
) -> bytes:
    """An event holding a batch (of the 2025-03-26 revision; no client of a later one reads
    it: the Python SDK failed the call), as one event for each message, each through the
    view; the event's other fields go with the last, so a resumption from its id follows
    them all. Each message is cut out of the text as it came, nothing built (one that needs
    mending excepted: ``_read_to_mend``); a batch of more than ``MAX_BATCH`` messages, or
    one in a batch, is dropped: one event of 100,000 tiny messages held the loop for 9 s
    (red-team wave 42). ``dropped`` is told each message the view dropped, and the whole
    batch when none of it could be read (too long, or unreadable): it might have held the
    stream's answer."""
    try:
        # A message's line ends (a batch written over several data lines) are whitespace
        # in JSON, never in a string: one line each, or a client read "data: {" alone.
        batch: list[bytes] | None = [one_line(bytes(raw)) for raw in _RAW_BATCH.decode(data)]
    except msgspec.DecodeError:  # NaN, a lone surrogate: each message mended, if small
        batch = _read_to_mend(data)
    except RecursionError:
        batch = None
    if batch is not None and len(batch) > MAX_BATCH:
        log.warning("upstream.batch_too_long", messages=len(batch))
        batch = None
    if batch is None:
        if dropped is not None:
            dropped(data)
        return b""
    messages = []
    for text in batch:
        if _OPENS_BATCH.match(text):  # a batch in a batch: no client reads it
            if dropped is not None:
                dropped(text)
            continue
        changed = filtered(text, view)
        if changed is not DROP:
            messages.append(changed if changed is not None else text)
        elif dropped is not None:
            dropped(text)
    if not messages:
        return b""
    last = [*fields[:data_at], b"data: " + messages[-1], *fields[data_at + 1 :]]
    events = [message_event(m) for m in messages[:-1]]
    return b"".join(events) + b"\n".join(last) + b"\n\n"


#: Messages one batch event may hold (split, each its own event); a longer batch is dropped.
MAX_BATCH = 64
_RAW_BATCH = msgspec.json.Decoder(list[msgspec.Raw])


def _read_to_mend(data: bytes) -> list[bytes] | None:
    """The messages of a batch msgspec will not read (``NaN``, a lone surrogate), each
    written again, mended; None when it is too long to mend or cannot be read."""
    if len(data) > MAX_MENDED_BYTES:
        return None
    try:
        batch = json_loads(data, object_pairs_hook=strict_object)
        if not isinstance(batch, list) or len(batch) > MAX_BATCH:
            return None
        return [json_bytes(mended(item)) for item in batch]
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def message_event(data: bytes) -> bytes:
    """One SSE ``message`` event carrying a JSON-RPC message."""
    return b"event: message\ndata: " + one_line(data) + b"\n\n"


def one_line(data: bytes) -> bytes:
    """A message for one ``data:`` line. JSON's line ends are whitespace (never in a string):
    made spaces. Kept, a pretty-printed answer went as ``data: {`` and lines no client reads
    (red-team wave 54), and what followed a line end would read as other fields."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b" ").replace(b"\n", b" ")
    return no_other_breaks(data)


#: The characters Python's ``splitlines`` also ends a line at that JSON holds raw (in its
#: strings alone): U+2028, U+2029, U+0085. A reader splitting so (httpx-sse 0.4.1, the
#: Python SDK 1.x's) read what a string held past two of them as an event of its own, a
#: message no view had seen (red-team wave 69). Written as JSON's escapes: the same text.
_OTHER_BREAKS = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)


def no_other_breaks(data: bytes) -> bytes:
    """``data`` (JSON text) with no character any reader ends a line at."""
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        for raw, escaped in _OTHER_BREAKS:
            data = data.replace(raw, escaped)
    return data


#: The fields an event passes on besides ``data`` and ``id``: its type, the reconnection
#: delay, and comments (a line beginning with a colon has an empty field name).
#: An upstream's event id past this is not passed on (the client would send it back as
#: ``Last-Event-ID``), nor a comment line past ``MAX_COMMENT_BYTES`` as it came: a 2 MiB
#: one ended the Python SDK's stream (its limit is 1 MiB a line), and the answer behind it
#: was lost (red-team wave 58).
MAX_EVENT_ID_BYTES = 1024
MAX_COMMENT_BYTES = 256


def resumable_id(value: bytes) -> bool:
    """Whether an upstream's event id goes on (wrapped, it is the client's to resume from):
    at most ``MAX_EVENT_ID_BYTES`` of printable ASCII. One holding a U+2028 or a 0x1C broke
    the line for readers that split as ``splitlines`` does, and what followed read as a
    message of the upstream's own making (red-team wave 69, as for comments)."""
    return len(value) <= MAX_EVENT_ID_BYTES and _PRINTABLE_ID.fullmatch(value) is not None


_PRINTABLE_ID = re.compile(rb"[\x20-\x7e]+")


def keep_alive(comment: bytes) -> bytes:
    """A comment line as it goes on: as it came when short and of printable ASCII alone,
    else an empty one. A reader that splits lines as Python's ``splitlines`` does (httpx-sse
    0.4.0 and 0.4.1, the MCP Python SDK 1.x's) broke a comment at a U+2028, a U+0085 or a
    0x1C in it, and read what followed as a message no view had seen: a tools list naming a
    hidden tool (red-team wave 69)."""
    if len(comment) <= MAX_COMMENT_BYTES and _PRINTABLE_COMMENT.fullmatch(comment):
        return comment
    return b":"


_PRINTABLE_COMMENT = re.compile(rb":[\x20-\x7e]*")


def not_utf8(data: bytes) -> bool:
    """Whether JSON bytes are anything but UTF-8 as the gateway reads them. A NUL byte is never
    in JSON text, and is how a UTF-16 or UTF-32 body looks to a parser that guesses the
    encoding (as Python's json does for bytes): such a body hides its keys from ``wants``."""
    if b"\x00" in data:
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def filtered(data: bytes, view: View, answer: bool = False) -> bytes | None:
    """A message's bytes rewritten by the view; None when they stay as they came, ``DROP``
    when they might hold something to filter but cannot be read strictly (not UTF-8, not
    JSON, nested too deeply, duplicate keys, a ``__proto__`` key, which a JavaScript client's
    schema library turns into the object's prototype, tools list and all): another parser
    could still read a tools list in them. ``answer``: the data is a request's whole answer,
    so one answer and nothing else (a notice, a server's request or a batch, given as a
    call's JSON answer, was passed on, and the client waited for its answer for good).
    A message of at most ``MAX_MENDED_BYTES`` holding ``NaN`` or an infinity (no JSON: the
    TypeScript SDK failed on it) or a lone surrogate (the Python SDK failed) is mended (see
    ``jsonrpc.mended``)."""
    if not_utf8(data) or not is_message_text(data):
        return DROP
    if not data:
        return None  # a priming event: no message, its id the client's to resume from
    unproven = False  # an answer whose shape the quick read could not tell
    if answer and data:
        if _OPENS_BATCH.match(data):
            return DROP
        found = answered_id(data)
        if found is NOT_AN_ANSWER:
            return DROP
        # NaN or a lone surrogate stops the quick read: such a notice or request, given as
        # a call's answer, went on mended (red-team wave 44). Read whole, or refused.
        unproven = found is NO_ID
        if unproven and len(data) > MAX_MENDED_BYTES:
            return DROP
    mend = len(data) <= MAX_MENDED_BYTES and needs_mending(data)
    read = unproven or b"__proto__" in data or view.wants(data)
    if not mend and not read:
        return None
    if read and not unproven and b"__proto__" not in data:
        spliced = spliced_by(view, data)  # what a view may write in without reading it
        if spliced is not None:
            return spliced
    try:
        message = json_loads(data, object_pairs_hook=strict_object)
        if mend:
            message = mended(message)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # Read only to be mended (an integer longer than Python reads, nesting past its
        # depth): passed as it came, as before it was mended.
        return DROP if read else None
    if unproven and not _is_answer(message):
        return DROP
    if isinstance(message, list):  # a batch of answers: each one on its own
        items = [view.filter(item) for item in message]
        if not mend and all(item is None for item in items):
            return None
        pairs = zip(items, message, strict=True)
        changed: Any = [new if new is not None else old for new, old in pairs]
        changed = [item for item in changed if item is not DROP]  # dropped by the view
        if not changed:
            return DROP
    else:
        changed = view.filter(message)
        if changed is DROP:  # (the view's DROP: not for this caller)
            return changed
        if changed is None:
            if not mend:
                return None
            changed = message
    return json_bytes(changed)


def _is_answer(message: Any) -> bool:
    """One answer: an id, a result or an error, and no method."""
    return (
        isinstance(message, dict)
        and "id" in message
        and "method" not in message
        and ("result" in message or "error" in message)
    )


#: A message is mended (``NaN`` to null, a lone surrogate to U+FFFD) when at most this
#: long: mending walks every value in Python, and a 30 MiB answer of ``NaN`` held the loop
#: for 13 s (red-team wave 42). A longer one passes as it came.
MAX_MENDED_BYTES = 256 * 1024


def is_message_text(data: bytes) -> bool:
    """Whether ``data`` is the JSON text of one JSON-RPC message (a request or notice: a
    method; an answer: a result or an error, and an id) or a batch of them, checked without
    building it. The bytes the view does not read were passed as they came: a crashing
    server's traceback (file paths and all) in an event reached the agent, and the SDK's
    client, failing to parse it, failed the call whose answer came next (red-team wave 39);
    so did ``{}``, ``[]`` or a server's own JSON log object (wave 40). Empty data (a priming
    event) is no message and passes."""
    if not data:
        return True
    opens = _OPENS_MESSAGE.match(data)
    if opens is None:
        return False
    try:
        if data[opens.end() - 1 : opens.end()] == b"[":
            batch = _BATCH.decode(data)
            return bool(batch) and all(_is_message(item) for item in batch)
        return _is_message(_head(data))
    except RecursionError:  # nested past what any parser here reads
        return False
    except msgspec.DecodeError:
        if len(data) > MAX_MENDED_BYTES:
            # too long to mend: passed on, the Python SDK failed on it, and on the call whose
            # stream it came on, its answer good or not (red-team wave 52). Not a message.
            return False
    # msgspec refuses an escaped lone surrogate (half an emoji a JavaScript server cut), which
    # is JSON: read by the parser the rest of the gateway uses, whose views deal with it
    try:
        value = json_loads(data)
    except (ValueError, RecursionError):
        return False
    if isinstance(value, list):
        return bool(value) and all(_is_message_value(item) for item in value)
    return _is_message_value(value)


def _is_message_value(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        return False
    if "method" in value:
        return True
    return ("result" in value) != ("error" in value) and "id" in value


class _Shape(msgspec.Struct):
    """What makes a JSON object a JSON-RPC message, nothing built."""

    jsonrpc: msgspec.Raw = msgspec.Raw(b"")
    id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    method: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


def _is_message(shape: _Shape | _Head) -> bool:
    if shape.jsonrpc != _VERSION:
        return False
    if shape.method is not msgspec.UNSET:
        return True
    answered = (shape.result is msgspec.UNSET) != (shape.error is msgspec.UNSET)
    return answered and shape.id is not msgspec.UNSET and bool(shape.id)


_VERSION = msgspec.Raw(b'"2.0"')
_OPENS_MESSAGE = re.compile(rb"[ \t\r\n]*[{\[]")
_BATCH = msgspec.json.Decoder(list[_Shape])


class _Head(msgspec.Struct):
    """One message's members as the quick reads here use them, nothing built: read once a
    message (``_head``), where each read used to skim the whole message again."""

    jsonrpc: msgspec.Raw = msgspec.Raw(b"")
    id: msgspec.Raw = msgspec.Raw(b"")  # (empty: none given; a given one never is)
    method: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_HEAD = msgspec.json.Decoder(_Head)
#: The message last read by ``_head`` and what it gave (a ``_Head`` or the error raised),
#: when it was at most ``_HEAD_KEPT`` bytes: the reads of one message (is it a message, what
#: does it answer, is it misshapen, what are its result's keys) follow each other with no
#: await between. Kept by identity, so the same bytes object, never equal other bytes.
_last_head: tuple[bytes, _Head | Exception] | None = None
_HEAD_KEPT = 64 * 1024


def _head(data: bytes) -> _Head:
    """``data``'s members; raises msgspec.DecodeError (or RecursionError) when it cannot be
    read as one JSON object."""
    global _last_head
    last = _last_head
    if last is not None and last[0] is data:
        read = last[1]
    else:
        try:
            read = _HEAD.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            read = exc
        if type(data) is bytes and len(data) <= _HEAD_KEPT:  # (never a buffer that may change)
            _last_head = (data, read)
    if isinstance(read, Exception):
        raise read
    return read


def has_data(event: bytes) -> bool:
    """Whether an event is dispatched with data (a message): a priming event (an id, with no
    ``data`` or an empty one) is not."""
    fields = [_field(line) for line in LINE.split(event) if line]
    data = [value for name, value in fields if name == b"data"]
    return len(data) > 1 or bool(data and data[0])


def answer_alone(event: bytes, msg_id: Any) -> bytes | None:
    """The data of ``event`` when it is a plain ``message`` event holding the final answer
    (result or error) to the request ``msg_id``, else None. Such an event, coming first, may go
    to the caller as a JSON answer instead of a stream: nothing else belongs to that request."""
    data: list[bytes] = []
    for line in LINE.split(event):
        if not line:
            continue
        name, value = _field(line)
        if name == b"data":
            data.append(value)
        elif name == b"event":
            if value != b"message":
                return None
        elif name not in (b"id", b"retry", b""):
            return None
    if not data:
        return None
    joined = b"\n".join(data)
    try:
        head = _ANSWER_HEAD.decode(joined)
    except (msgspec.DecodeError, RecursionError):
        return None
    if head.method is not msgspec.UNSET or len(head.id) > MAX_ID_BYTES:
        return None
    answered = msgspec.json.decode(head.id) if head.id else None
    if type(answered) is not type(msg_id) or answered != msg_id:  # 1 is not True
        return None
    final = (head.result is msgspec.UNSET) != (head.error is msgspec.UNSET)
    return joined if final else None


#: An answer's id is a request's, which is short; a longer one answers no request of ours.
MAX_ID_BYTES = 1024


class _ResultKeys(msgspec.Struct):
    resultType: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET  # (the wire's names)
    ttlMs: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    cacheScope: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_RESULT_KEYS = msgspec.json.Decoder(_ResultKeys)


def result_keys(data: bytes) -> tuple[bool, bool, bool] | None:
    """Whether a message's result names ``resultType``, and ``ttlMs`` and ``cacheScope`` with
    values a client reads (a whole number of milliseconds, ``public`` or ``private``: a
    ``ttlMs`` of 1.5 or a ``cacheScope`` of "shared" failed the SDKs' reading of the whole
    list, red-team wave 68), among its own keys (the words anywhere else in it say nothing:
    a tool's output with a column named ``resultType``), read without building any of it;
    None when it holds no result object or does not read as one message."""
    try:
        result = _head(data).result
        if result is msgspec.UNSET:
            return None
        keys = _RESULT_KEYS.decode(result)
    except (msgspec.DecodeError, RecursionError):
        return None
    ttl, scope = keys.ttlMs, keys.cacheScope
    ttl_read = isinstance(ttl, msgspec.Raw) and _WHOLE_MS.fullmatch(bytes(ttl)) is not None
    scope_read = isinstance(scope, msgspec.Raw) and bytes(scope) in _SCOPES
    return keys.resultType is not msgspec.UNSET, ttl_read, scope_read


_WHOLE_MS = re.compile(rb"0|[1-9][0-9]{0,14}")
_SCOPES = (b'"public"', b'"private"')


#: ``answered_id`` of a message that is no answer, and of one whose id is unreadable (too
#: long to be a request's, or the message not JSON: it is read strictly, and refused, later).
NOT_AN_ANSWER: Any = object()
NO_ID: Any = object()


def answered_id(data: bytes) -> Any:
    """The id a message answers (a result or an error, with no method), read without
    building the rest of it: ``NOT_AN_ANSWER`` for anything else, ``NO_ID`` when it cannot
    be told."""
    if b'"result"' not in data and b'"error"' not in data:
        return NOT_AN_ANSWER  # (a key spelled with escapes is read whole: see ``wants``)
    try:
        head = _head(data)
    except (msgspec.DecodeError, RecursionError):
        return NO_ID
    unset = msgspec.UNSET
    if head.result is unset and head.error is unset:
        return NOT_AN_ANSWER
    if head.method is not unset:  # a method (even null) and an answer: read whole, dropped
        return NO_ID
    if len(head.id) > MAX_ID_BYTES:
        return NO_ID
    return msgspec.json.decode(head.id) if head.id else None


def method_of(data: bytes) -> str | None:
    """A message's method, read without building the rest of it: None when it names none,
    ``UNREADABLE_METHOD`` when it names one that is no string (null too: it went on unread,
    and the Python SDK failed the call) or cannot be read so."""
    try:
        method = _head(data).method
        if method is msgspec.UNSET:
            return None
        name = _METHOD_NAME.decode(method)
    except (msgspec.DecodeError, RecursionError):
        return UNREADABLE_METHOD
    return name if name is not None else UNREADABLE_METHOD


#: What ``method_of`` gives for a method it cannot tell: never a method any list holds.
UNREADABLE_METHOD = "\x00unreadable"


_METHOD_NAME = msgspec.json.Decoder(str | None)


def carries_id(data: bytes) -> bool:
    """Whether a message's JSON names an id (a request or an answer, not a notice), read
    without building any of it."""
    try:
        return bool(_head(data).id)
    except (msgspec.DecodeError, RecursionError):
        return False


def asks(events: bytes) -> bool:
    """Whether the last message of whole events (as relayed) is a request of the server's
    to the client (a method and an id: elicitation, sampling, roots), read without building
    any of it."""
    if b'"method"' not in events or b'"id"' not in events:
        return False
    asking = False
    for event in EVENT_END.split(events):
        data = event_data(event) if event.strip() else None
        if data is None:
            continue
        try:
            head = _ANSWER_HEAD.decode(data)
        except (msgspec.DecodeError, RecursionError):
            asking = False
            continue
        asking = head.method is not msgspec.UNSET and head.id not in (b"", b"null")
    return asking


class _AnswerHead(msgspec.Struct):
    """What tells an answer from the rest; nothing is built but a short id (an id or method
    of 4 MiB of tiny lists, built with the collector running, held the loop two seconds)."""

    id: msgspec.Raw = msgspec.Raw(b"")
    method: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_ANSWER_HEAD = msgspec.json.Decoder(_AnswerHead)


class _ErrorShape(msgspec.Struct):
    code: int
    message: str


_ERROR_SHAPE = msgspec.json.Decoder(_ErrorShape)


def misshapen(data: bytes) -> bool:
    """Whether a message gives ``params`` or a ``result`` that is no object, or an ``error``
    that is no object of a whole ``code`` and a text ``message`` (or cannot be read so),
    read without building it: no client reads such a message (the Python SDK failed the
    call it came on, or waited for its answer until its timeout)."""
    if not data:
        return False
    try:
        head = _head(data)
    except (msgspec.DecodeError, RecursionError):
        return False  # no message read so (an empty event's data): the other reads tell
    if head.error is not msgspec.UNSET:
        try:
            _ERROR_SHAPE.decode(head.error)
        except (msgspec.DecodeError, RecursionError):
            return True
    return any(  # (the first byte only: a Raw made bytes is a copy of all of it)
        part is not msgspec.UNSET and memoryview(part)[:1].tobytes() != b"{"
        for part in (head.params, head.result, head.error)
    )


def shapely(message: dict[str, Any]) -> bool:
    """``misshapen``'s rule on a message read whole: its ``params`` and ``result``, where
    given, objects, its ``error`` an object of a whole ``code`` and a text ``message``."""
    error = message.get("error", {"code": 0, "message": ""})
    return (
        isinstance(message.get("params", {}), dict)
        and isinstance(message.get("result", {}), dict)
        and isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )


def strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as ``json`` reads it, refused (ValueError) with a duplicate key or a
    ``__proto__`` key."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    if "__proto__" in out:  # a JavaScript client reads what it holds as the object's own keys
        raise ValueError("__proto__ key")
    return out


class SseEvents:
    """Chunks of a stream in, its whole events out.

    The bytes of an event not yet ended are kept as the pieces they came in, and each chunk is
    searched once, with the last few bytes before it (an event's end may straddle two chunks):
    joining and searching the whole of a pending event on every chunk would cost time in the
    square of its size, and one large event would hold up every other caller's events.
    """

    held_by_all = 0  # the pending bytes of every stream of the process
    _open: weakref.WeakSet[SseEvents] = weakref.WeakSet()  # every stream, for _make_room

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the event not yet ended, as it came
        self._pending_bytes = 0
        self._failed = False  # its event was let go to make room: it fails at its next chunk
        SseEvents._open.add(self)
        self._tail = b""  # its last bytes, where the next chunk's event end may begin
        self._head: bytes | None = b""  # the stream's first bytes, until a BOM is ruled out

    @property
    def pending_bytes(self) -> int:
        """The size of the event not yet ended."""
        return self._pending_bytes

    def split(self, chunk: bytes) -> list[bytes]:
        """The events ``chunk`` completes, as they came (each with its closing blank line)."""
        if self._failed:
            raise StreamTooLarge("its SSE event was let go: every stream's were over budget")
        if self._head is not None:  # a stream may begin with a BOM, which clients skip
            head = self._head + chunk
            if len(head) < len(BOM) and BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head.removeprefix(BOM)
        # The pending bytes hold no event end, and one is at most 4 bytes long: any end found
        # now begins at most 3 bytes before the chunk, and none can end before the chunk.
        window = self._tail + chunk
        known = len(self._tail)  # window[:known] is already pending
        out: list[bytes] = []
        start = 0 if self._pending else _past_quiet(window, 0, out)  # where an event begins
        while (match := EVENT_END.search(window, start)) is not None:
            self._pending.append(window[max(start, known) : match.end()])
            out.append(b"".join(self._pending))
            self._drop_pending()
            start = _past_quiet(window, match.end(), out)
        self._keep(window, max(start, known), start)
        if self._pending_bytes > MAX_EVENT_BYTES:
            raise StreamTooLarge(f"an SSE event over {MAX_EVENT_BYTES} bytes")
        if SseEvents.held_by_all > MAX_ALL_PENDING_BYTES:
            self._make_room()
        return out

    def _make_room(self) -> None:
        """Every stream's pending bytes over the budget: the stream holding the most fails
        (this one at once; another at its next chunk, its bytes let go now), not whichever
        grew last (one upstream's unending events failed every other server's streams)."""
        largest = max(SseEvents._open, key=lambda s: s._pending_bytes, default=self)
        if largest is self or largest._pending_bytes <= self._pending_bytes:
            raise StreamTooLarge(f"SSE events not ended over {MAX_ALL_PENDING_BYTES} bytes")
        largest._drop_pending()
        largest._failed = True

    def _drop_pending(self) -> None:
        SseEvents.held_by_all -= self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    def __del__(self) -> None:  # a stream let go mid-event: its bytes are free
        SseEvents.held_by_all -= self._pending_bytes

    def _keep(self, window: bytes, new: int, start: int) -> None:
        """Keep ``window[new:]``, the rest of an event that began at ``window[start]``."""
        if new < len(window):
            self._pending.append(window[new:])
            self._pending_bytes += len(window) - new
            SseEvents.held_by_all += len(window) - new
        self._tail = window[max(start, len(window) - 3) :]

    def close(self) -> bytes:
        """An event left without its closing blank line is dropped: it was never dispatched
        (a client discards it too), and passing it unfiltered would be a way around the view."""
        self._drop_pending()
        self._tail = b""
        return b""


def _past_quiet(window: bytes, start: int, out: list[bytes]) -> int:
    """Where the next event that may dispatch something begins, from ``start`` (an event's
    beginning); the first comment of the quiet events skipped, if any, in ``out``."""
    run = QUIET_EVENTS.match(window, start)
    if run is None:
        return start
    comment = _COMMENT.search(window, start, run.end())
    if comment is not None:
        out.append(keep_alive(comment[0]) + b"\n\n")
    return run.end()


def event_data(event: bytes) -> bytes | None:
    """The data of one whole event (its ``data`` lines joined), or None when it has none."""
    data = [value for name, value in map(_field, LINE.split(event)) if name == b"data"]
    return b"\n".join(data) if data else None


class SseRewriter(SseEvents):
    """Feed chunks in, get the bytes to send on at once, each event through the view.
    ``awaited``: the id of the request whose answer the stream carries; ``lost_answer`` is
    set once a message the view dropped was that answer (a stream that went on without it
    left the client waiting for good: red-team wave 44)."""

    def __init__(self, view: View, awaited: Any = None) -> None:
        super().__init__()
        self.view = view
        self.awaited = awaited
        self.lost_answer = False
        self.answered = False  # the request's answer went on
        self._awaited_text: re.Pattern[bytes] | None = None
        #: An event id was passed on: the client may resume the stream from it.
        self.resumable = False

    def feed(self, chunk: bytes) -> bytes:
        return self.rewrite(self.split(chunk))

    def rewrite(self, events: list[bytes]) -> bytes:
        """Events from ``split`` as the caller receives them."""
        if self.awaited is None:
            return b"".join([rewrite_event(event, self.view) for event in events])
        out = []
        for event in events:
            shown = rewrite_event(event, self.view, self._dropped)
            if not self.resumable and (shown.startswith(b"id: ") or b"\nid: " in shown):
                self.resumable = True
            if not self.answered and shown and (b'"result"' in shown or b'"error"' in shown):
                datas = [event_data(one) for one in EVENT_END.split(shown) if one]
                self.answered = any(
                    same_id_as(answered_id(data), self.awaited) for data in datas if data
                )
                if self.answered:  # it went on: another copy dropped beside it was no loss
                    self.lost_answer = False
            out.append(shown)
        return b"".join(out)

    def _dropped(self, data: bytes) -> None:
        if self.answered:  # a second answer, dropped: the first one went on
            return
        if _OPENS_BATCH.match(data):  # a batch not read: its answer, if it names its id
            # (a batch of notices alone, too long to read, ended a stream whose answer came
            # later: red-team wave 47)
            if self._names_awaited(data):
                self.lost_answer = True
            return
        found = answered_id(data)
        if found is NO_ID and len(data) > MAX_MENDED_BYTES:  # not read: its answer if it names it
            if self._names_awaited(data):
                self.lost_answer = True
            return
        if found is NO_ID:  # read as a client would
            try:
                message = json_loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                return
            if isinstance(message, dict) and ("result" in message or "error" in message):
                found = message.get("id", NOT_AN_ANSWER)
        if same_id_as(found, self.awaited):
            self.lost_answer = True

    def _names_awaited(self, data: bytes) -> bool:
        """Whether the text of ``data`` holds ``"id":`` and the awaited id (spaces allowed),
        anywhere: a batch too long or too odd to read is not read for it."""
        if self._awaited_text is None:
            written = re.escape(json_bytes(self.awaited))
            self._awaited_text = re.compile(rb'"id"\s*:\s*' + written + rb"(?![0-9.eE])")
        return self._awaited_text.search(data) is not None


def same_id_as(found: Any, wanted: Any) -> bool:
    """Whether ``found`` is ``wanted``, of its own JSON type (``1`` is not ``"1"``, nor
    ``true``)."""
    return type(found) is type(wanted) and found == wanted
