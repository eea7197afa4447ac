"""What one JSON text parsed on the loop may build: its objects and lists are counted first."""

from __future__ import annotations

import pytest

from gateway.wire import jsonrpc
from gateway.wire.jsonrpc import BadMessage


def test_json_of_too_many_objects_and_lists_is_refused_before_it_is_built() -> None:
    """Each is a Python object of 60 bytes or more: 33 MiB of ``{},`` parsed to 0.9 GiB,
    within every byte bound (red-team wave 35). Counted by their brackets, strings' too."""
    many = b"[" + b"{}," * (jsonrpc.MAX_PARSED_CONTAINERS + 1) + b"{}]"
    with pytest.raises(jsonrpc.TooManyContainers):
        jsonrpc.loads(many)
    body = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":' + many + b"}}"
    with pytest.raises(BadMessage, match="objects and lists"):
        jsonrpc.parse_body(body)
    fine = b"[" + b"1," * (jsonrpc.MAX_PARSED_CONTAINERS + 1) + b"1]"  # as long, no objects
    assert len(jsonrpc.loads(fine)) == jsonrpc.MAX_PARSED_CONTAINERS + 2


def test_brackets_inside_strings_are_not_objects() -> None:
    """A tool returning a data file as text (``[[1.5,2.5],...]``, one string) was refused,
    and another agent's stored note of brackets made every read of the store fail (red-team
    wave 36): brackets are counted again without strings' contents when over."""
    data = '"' + "[[1.5,2.5]," * (jsonrpc.MAX_PARSED_CONTAINERS // 2) + '\\" {[ escaped"'
    text = ('{"jsonrpc":"2.0","id":1,"result":{"text":' + data + "}}").encode()
    assert jsonrpc.count_containers(text) > jsonrpc.MAX_PARSED_CONTAINERS
    assert jsonrpc.loads(text)["result"]["text"].endswith('" {[ escaped')


def test_integers_past_a_thousand_digits_are_refused() -> None:
    """Python reads up to 4,300 digits, in time that grows with the square of their number:
    4 MiB of 4,299-digit integers cost 0.5 s of the loop to read and digest (red-team wave
    41). Digits in a string are text, not a number."""
    head = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"n":'
    most = int("9" * jsonrpc.MAX_INT_DIGITS)
    assert (
        jsonrpc.parse_body(head + str(most).encode() + b"}}}")["params"]["arguments"]["n"] == most
    )
    assert (
        jsonrpc.parse_body(head + str(-most).encode() + b"}}}")["params"]["arguments"]["n"] == -most
    )
    for past in (b"9" * (jsonrpc.MAX_INT_DIGITS + 1), b"-" + b"1" * 4299):
        with pytest.raises(BadMessage, match="more than 1000 digits") as caught:
            jsonrpc.parse_body(head + past + b"}}}")
        assert caught.value.code == jsonrpc.PARSE_ERROR
    digits = '"' + "7" * 5000 + '"'
    parsed = jsonrpc.parse_body(head + digits.encode() + b', "m": 12}}}')
    assert parsed["params"]["arguments"] == {"n": "7" * 5000, "m": 12}
    # a fraction of 5,000 digits says more than a double holds (rules would read 1.5555...56)
    with pytest.raises(BadMessage, match="more precision"):
        jsonrpc.parse_body(head + b"1." + b"5" * 5000 + b"}}}")


def test_a_long_line_is_read_by_the_fast_parser_within_the_same_bounds() -> None:
    """A stdio child's line past ``FAST_LOADS_BYTES`` is read by msgspec: Python's parser took
    7 s of the loop every caller shares for an unasked line of 60 MiB of numbers (red-team
    wave 51). It reads the same values, keeps a repeated key's last value as Python's does,
    and is held to the same bound on objects and lists."""
    numbers = ",".join(str(n) for n in range(jsonrpc.FAST_LOADS_BYTES // 6))
    text = '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":[%s],"a":1,"a":2}}'
    line = (text % numbers).encode()
    assert len(line) > jsonrpc.FAST_LOADS_BYTES
    read = jsonrpc.loads_line(line)
    assert read == jsonrpc.loads(line) and read["params"]["a"] == 2
    # NaN: Python's parser reads it, msgspec does not; a long line is never read twice.
    short = b'{"jsonrpc":"2.0","method":"m","params":{"x":NaN}}'
    assert jsonrpc.loads_line(short)["params"]["x"] != 0
    with pytest.raises(ValueError):
        jsonrpc.loads_line(line.replace(b'"a":1', b'"a":NaN'))
    many = b"[" + b"{}," * (jsonrpc.MAX_PARSED_CONTAINERS + 1) + b"{}]"
    with pytest.raises(jsonrpc.TooManyContainers):
        jsonrpc.loads_line(many)


@pytest.mark.parametrize("size", [10_000, 600_000])
def test_a_line_nested_too_deeply_is_no_json_not_a_crash(size: int) -> None:
    """Both parsers raise RecursionError past their depth; a child's reader catches
    ``ValueError`` only, and went down with the line."""
    with pytest.raises(ValueError):
        jsonrpc.loads_line(b"[" * size + b"]" * size)


def test_other_spellings_of_mcps_parameters_are_refused() -> None:
    """The SDKs' models read ``request_id`` as ``requestId`` (pydantic, by field name), the
    gateway only MCP's own: a cancel so spelled reached the server unseen by the gateway's
    bookkeeping (red-team wave 59). Every such field of ``mcp_types``' params is refused; an
    operator's own method (``relay.extra_methods``) keeps its parameters as they are."""
    import inspect

    import mcp_types
    import pydantic

    aliased = {
        name
        for model_name, model in vars(mcp_types).items()
        if inspect.isclass(model) and issubclass(model, pydantic.BaseModel)
        if model_name.endswith("Params")
        for name, field in model.model_fields.items()
        if (field.alias or name) != name
    }
    assert aliased <= set(jsonrpc.OTHER_SPELLINGS)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"request_id": 1}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "meta": {}}}
    for message, spelled in ((cancel, "requestId"), (call, "_meta")):
        with pytest.raises(BadMessage, match=f"write {spelled}") as caught:
            jsonrpc.classify(message)
        assert caught.value.code == jsonrpc.INVALID_PARAMS
    vendor = {"jsonrpc": "2.0", "id": 2, "method": "vendor/x", "params": {"request_id": 1}}
    assert jsonrpc.classify(vendor, frozenset({"vendor/x"})).params == {"request_id": 1}


def test_only_the_notifications_a_client_may_send_are_classified() -> None:
    """A client's ``notifications/evil/run`` was passed on to its server (on ``/mcp``, to
    every server): only MCP's client notifications are forwarded, and an operator's own
    (``relay.extra_methods``) as notices only (red-team wave 62)."""
    for method in sorted(jsonrpc.CLIENT_NOTIFICATION_METHODS):
        assert jsonrpc.classify({"jsonrpc": "2.0", "method": method}).kind == "notification"
    for method in ("notifications/evil/run", "notifications/tools/list_changed"):
        with pytest.raises(BadMessage, match="unknown notification") as caught:
            jsonrpc.classify({"jsonrpc": "2.0", "method": method, "params": {}})
        assert caught.value.code == jsonrpc.METHOD_NOT_FOUND and caught.value.status == 400
    own = frozenset({"notifications/vendor/told"})
    told = jsonrpc.classify({"jsonrpc": "2.0", "method": "notifications/vendor/told"}, own)
    assert told.kind == "notification"
    with pytest.raises(BadMessage) as caught:  # a notice's name is no request's
        jsonrpc.classify({"jsonrpc": "2.0", "id": 1, "method": "notifications/vendor/told"}, own)
    assert caught.value.code == jsonrpc.METHOD_NOT_FOUND


def test_a_client_request_may_not_take_an_id_of_the_gateways() -> None:
    """The gateway's own requests to a server (``celgate-agg-...`` for a merged list) share
    the caller's session: a ``tools/call`` under such an id was given the answer to the
    gateway's ``tools/list``, every tool the policy hides (red-team wave 63). A request, or
    a cancel naming one, is refused; an answer to a request of the gateway's carries one."""
    call = {"jsonrpc": "2.0", "id": "celgate-agg-6", "method": "tools/call", "params": {}}
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": "celgate-agg-6"},
    }
    for message in (call, cancel):
        with pytest.raises(BadMessage, match="the gateway's own") as caught:
            jsonrpc.classify(message)
        assert caught.value.code == jsonrpc.INVALID_REQUEST
    answer = {"jsonrpc": "2.0", "id": "celgate-x.mac", "result": {"action": "accept"}}
    assert jsonrpc.classify(answer).kind == "response"
    assert jsonrpc.classify({**call, "id": "my-celgate-1"}).kind == "request"


def test_numbers_read_the_slow_way_are_bounded_and_zeros_are_not_among_them() -> None:
    """Zeros and numbers below a double's normal range were each read exactly (``repr``
    and two ``Decimal``s): a body of a million held every other caller 0.7 s (red-team wave
    69). An exact zero is read at once; past ``MAX_SLOW_NUMBERS`` of the others, refused."""
    cap = jsonrpc.MAX_SLOW_NUMBERS

    def body(number: str, count: int) -> bytes:
        return ('{"a": [' + ",".join([number] * count) + "]}").encode()

    for zero in ("0e0", "-0.0", "0.000E+5", "0.0"):
        assert jsonrpc.parse_body(body(zero, cap * 3))["a"][0] == 0.0
    assert len(jsonrpc.parse_body(body("5e-324", cap))["a"]) == cap
    with pytest.raises(BadMessage, match="numbers with long fractions"):
        jsonrpc.parse_body(body("5e-324", cap + 1))
    assert len(jsonrpc.parse_body(body("5e-324", cap))["a"]) == cap  # counted per body
    with pytest.raises(BadMessage, match="more precision"):
        jsonrpc.parse_body(b'{"a": 1e-400}')  # (no zero: a number that fell to one)
