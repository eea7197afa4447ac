"""cel-python's compiled runner, made fast and fail-closed.

Its compiled runner (expressions transpiled to Python closures) is about six times faster than
its interpreter, and the first ``celpy.Environment`` created fixes a process-wide parser, so
the compiled environment is created here, at import, before anything else. What this module
changes in the library's behaviour: evaluations read a plain namespace instead of an
Activation, ``matches()`` keeps compiled RE2 patterns, ``has()`` works under ``!``/``&&``/``||``,
integers skip a per-value wrapper, JSON converts by exact type, and every evaluation error
becomes a ``PolicyEvalError`` with its code.
"""

from __future__ import annotations

import logging
import operator
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
import re2
from celpy import celtypes, evaluation
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from gateway.errors import PolicyEvalError

# cel-python logs every evaluation error with a traceback; errors are ours to report.
logging.getLogger("celpy").setLevel(logging.CRITICAL)
logging.getLogger("Evaluator").setLevel(logging.CRITICAL)

ENV = celpy.Environment(runner_class=celpy.CompiledRunner)


class Vars:
    """What the transpiled code reads as ``activation``: the variables as attributes.

    cel-python's own Activation clones itself and resolves every name through typed name
    containers on each evaluation; for the six flat variables of our context a plain
    namespace gives the same values at a fraction of the cost. Macros nest it for their
    bound variable.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name that is not set: the loader rejects undeclared names, so
        # this is a variable the caller did not supply. NameError becomes a CEL error.
        raise NameError(f"no value for {name!r}")

    def nested_activation(self, annotations: Any = None, vars: Any = None) -> Vars:
        nested = Vars(self.__dict__)
        nested.__dict__.update(vars or {})
        return nested

    def resolve_variable(self, name: str) -> Any:
        return getattr(self, name)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is our error to report, not a line on stderr


def regex(pattern: str) -> Any:
    """The compiled pattern; the last 1,024 of up to 1,024 characters are kept (a rule may
    match against a pattern the caller sends: long ones are compiled each time)."""
    if len(pattern) > 1024:
        return re2.compile(pattern, _RE2_OPTIONS)
    return _regex_cached(pattern)


@lru_cache(maxsize=1024)
def _regex_cached(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def re2_message(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _matches(text: Any, pattern: Any) -> Any:
    """CEL ``matches()`` (RE2 search) with compiled patterns kept: cel-python compiles the
    pattern on every call, which was a fifth of a regex rule's time."""
    try:
        found = regex(pattern).search(text)
    except re2.error as exc:
        return CELEvalError("match error", exc.__class__, exc.args)
    return celtypes.BoolType(found is not None)


def _size(container: Any) -> Any:
    """CEL ``size()`` of a string, bytes, a list or a map, without the debug line cel-python
    formats on every call. Of null it is an error, as CEL says (cel-python's 0 made
    ``size(args.x) > 3`` false for an ``x`` sent as null, and a deny rule let it through)."""
    if container is None or isinstance(container, CELEvalError):
        return container if container is not None else _no_size()
    return celtypes.IntType(len(container))


def _no_size() -> CELEvalError:
    return CELEvalError("no such overload", TypeError, ("size(null)",))


#: Iterations of the macros (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) one
#: evaluation may run, all nested ones counted: the lists come from callers, and two nested
#: macros over a 100,000-item argument would hold the event loop, and every other call, for
#: minutes. Past it the condition fails (``cel.too_costly``): the rule's error, a deny.
MAX_ITERATIONS = 10_000


class _Budgets(threading.local):
    """What the evaluation running on this thread may still spend (one per thread: the
    counts of two threads' evaluations must not mix)."""

    def __init__(self) -> None:
        self.iterations = MAX_ITERATIONS
        self.items = 0


_budget = _Budgets()


class CelTooCostly(Exception):
    """Raised through the transpiled code (not one of the errors CEL takes as a value)."""


def _start_budget() -> None:
    _budget.iterations = MAX_ITERATIONS


#: What CEL's macros and ``in`` range over: lists, and maps (their keys). cel-python also
#: ranges over a string's characters, so ``"prod" in args.envs`` was false, not an error,
#: for ``envs`` sent as the string ``'["prod"]'``, which a server may well parse into a list.
_RANGES = (celtypes.ListType, celtypes.MapType)


def _not_a_range(value: Any) -> CELEvalError:
    return CELEvalError(
        "no such overload", TypeError, (f"cannot range over {type(value).__name__}",)
    )


def _budgeted(macro: Callable[..., Any]) -> Callable[..., Any]:
    """``macro`` over a list or a map only, with each item it takes from its source counted
    against the budget."""

    def run(activation: Any, bind: str, expr: Any, source: Callable[[Any], Any]) -> Any:
        items = source(activation)
        if isinstance(items, CELEvalError):
            return items
        if not isinstance(items, _RANGES):
            return _not_a_range(items)

        def counted(_: Any) -> Iterator[Any]:
            budget = _budget
            for item in items:
                budget.iterations -= 1
                if budget.iterations < 0:
                    raise CelTooCostly
                yield item

        return macro(activation, bind, expr, counted)

    return run


def _in(item: Any, container: Any) -> Any:
    """CEL's ``in``, for a list or a map only (an error otherwise, so the rule fails closed)."""
    if not isinstance(container, _RANGES) and not isinstance(container, CELEvalError):
        return _not_a_range(container)
    return evaluation.operator_in(item, container)


def _contains(text: Any, fragment: Any) -> Any:
    """CEL's ``contains()``, a string function only. cel-python hands it to the container, so
    on a list it tested membership: ``args.command.contains("rm")`` was false for
    ``["rm -rf /"]``, and a deny rule written for a string let the list through."""
    if isinstance(text, CELEvalError):
        return text
    if isinstance(fragment, CELEvalError):
        return fragment
    if not isinstance(text, celtypes.StringType) or not isinstance(fragment, celtypes.StringType):
        kinds = f"{type(text).__name__}.contains({type(fragment).__name__})"
        return CELEvalError("no such overload", TypeError, (kinds,))
    return celtypes.BoolType(fragment in text)


#: cel-python's functions the transpiled code calls, and ours in their place. Its comparison
#: operators (``bool_lt`` and the rest) wrap ``operator.lt`` in a new decorated function on
#: every call; the same wrapper made once gives the same result.
_SWAPPED: dict[str, Callable[..., Any]] = {
    "function_matches": _matches,
    "function_contains": _contains,
    "function_size": _size,
    "operator_in": _in,
    **{
        f"macro_{name}": _budgeted(getattr(evaluation, f"macro_{name}"))
        for name in ("all", "exists", "exists_one", "map", "filter")
    },
    **{
        f"bool_{name}": evaluation.boolean(getattr(operator, name))
        for name in ("lt", "le", "gt", "ge", "eq", "ne")
    },
}


def runner(source: str) -> Callable[[Vars], Any]:
    """The transpiled statements as one function of the activation.

    cel-python executes its transpiled module with a process-wide ``base_activation`` global
    on every evaluation; as a function taking the activation it runs without that global
    (so evaluations cannot see each other's variables) and without re-``exec``.
    """
    body = "\n".join("    " + line for line in source.splitlines())
    text = f"def _cel(base_activation):\n    _cel_start_budget()\n{body}\n    return CEL\n"
    namespace = dict(evaluation.result.__globals__)
    namespace["_cel_start_budget"] = _start_budget
    for library, ours in _SWAPPED.items():
        if library in text:
            text = text.replace(f"celpy.evaluation.{library}(", f"_cel_{library}(")
            namespace[f"_cel_{library}"] = ours
    for kind, convert in _CONVERSIONS.items():
        if kind in text:
            text = text.replace(f"celpy.celtypes.{kind}(", f"_cel_to_{kind}(")
            namespace[f"_cel_to_{kind}"] = convert
    exec(compile(text, "<cel>", "exec"), namespace)
    fn: Callable[[Vars], Any] = namespace["_cel"]
    return fn


@dataclass(frozen=True, slots=True)
class CelpyProgram:
    source: str
    variables: frozenset[str]
    runner: Callable[[Vars], Any]
    args_fields: frozenset[str] | None = None

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        try:
            value = self.runner(Vars(activation))
        except CELEvalError as exc:
            raise eval_error(self.source, exc) from None
        except RecursionError:
            raise PolicyEvalError("cel.error", self.source, "RecursionError") from None
        except CelTooCostly:
            detail = f"its macros ran more than {MAX_ITERATIONS} iterations"
            raise PolicyEvalError("cel.too_costly", self.source, detail) from None
        except Exception as exc:  # the transpiled code is Python: any error is a CEL error
            wrapped = CELEvalError("evaluation error", type(exc), exc.args)
            raise eval_error(self.source, wrapped) from None
        if isinstance(value, CELEvalError):
            raise eval_error(self.source, value)
        if not isinstance(value, celtypes.BoolType | bool):
            kind = type(value).__name__.removesuffix("Type").lower()
            raise PolicyEvalError("cel.not_bool", self.source, f"result is {kind}, not bool")
        return bool(value)


def _innermost(exc: BaseException) -> tuple[str, str]:
    """Walk cel-python's nested error args down to (message, python error class name)."""
    args: tuple[Any, ...] = exc.args
    message, kind = "evaluation error", ""
    while args:
        if isinstance(args[0], str):
            message = args[0]
        if len(args) > 1 and isinstance(args[1], type):
            kind = args[1].__name__
        nested = args[2] if len(args) > 2 else ()
        if not isinstance(nested, tuple) or nested == args:
            break
        args = nested
    return message, kind


def eval_error(source: str, exc: BaseException) -> PolicyEvalError:
    message, kind = _innermost(exc)
    if "overflow" in message:  # as cel-google says it (cel-python's was cel.error)
        return PolicyEvalError("cel.arithmetic", source, message)
    told = repr(exc.args)[:2000]
    if "BadCelValue" in told or "ParserError" in told:  # a string no timestamp or duration
        # reads: a value CEL cannot take (cel-python's was cel.missing_key, under a KeyError)
        what = "a value that does not parse (a timestamp is RFC 3339, with its offset)"
        return PolicyEvalError("cel.bad_value", source, what)
    if kind in {"KeyError", "IndexError"} or ("no such" in message and "member" in message):
        return PolicyEvalError("cel.missing_key", source, message)
    if kind in {"TypeError", "AttributeError"} or "overload" in message:
        return PolicyEvalError("cel.type_error", source, message)
    if kind == "ZeroDivisionError" or "divide" in message:
        return PolicyEvalError("cel.arithmetic", source, message)
    return PolicyEvalError("cel.error", source, message)


# cel-python 0.5's transpiler emits `has(...)` as a Python bool, which its own `&&`, `||` and
# `!` reject ("no such overload"): `!has(args.x)` always errors and `has(args.x) && ...`
# errors whenever the key is absent. Wrapping the emitted test in BoolType restores CEL.
_HAS_LINE = re.compile(
    r"^(ex_\d+ = lambda activation: )"
    r"(not isinstance\(celpy\.evaluation\.result\(activation, ex_\d+_h\), CELEvalError\))$",
    re.MULTILINE,
)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63


def _int_type_new(cls: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
    """``IntType(n)`` for a plain in-range ``int``, without cel-python's detour.

    cel-python builds a ``functools.wraps`` overflow-checking wrapper on every ``IntType``
    it makes, including each integer literal of a transpiled expression on every evaluation
    and every ``size()``: about 3 µs each. For a plain int the result is the same int, range
    checked the same way; anything else goes to the library as before.
    """
    if type(source) is int and _INT64_MIN <= source < _INT64_MAX:
        return int.__new__(cls, source)
    return _LIBRARY_INT_NEW(cls, source, *args, **kwargs)


_LIBRARY_INT_NEW = celtypes.IntType.__new__
celtypes.IntType.__new__ = _int_type_new  # type: ignore[method-assign]


def _is_bool(value: Any) -> bool:
    return isinstance(value, celtypes.BoolType) or type(value) is bool


def _bool_order(name: str) -> Callable[[Any, Any], Any]:
    compare = getattr(int, name)

    def method(self: Any, other: Any) -> Any:
        return compare(self, other) if _is_bool(other) else _no_overload(self, other)

    return method


def _bool_equality(name: str) -> Callable[[Any, Any], Any]:
    compare = getattr(int, name)
    different = name == "__ne__"

    def method(self: Any, other: Any) -> Any:
        if _is_bool(other):
            return compare(self, other)
        if isinstance(other, int | float):  # a number is no bool: no overload, as for ints
            return _no_overload(self, other)
        return different  # null, a string, a list: another type, so not equal (as before)

    return method


def _no_overload(self: Any, other: Any) -> Any:
    raise TypeError(f"no such overload: {self!r} {type(self)} and {other!r} {type(other)}")


def _bool_text(self: Any) -> str:
    return "true" if self else "false"


# cel-python's BoolType is an int with int's operators: `args.n <= 100` allowed a call with
# `"n": true`, `true == 1` and `true + 1 == 2` held, where CEL has no such overload and the
# other engine says cel.type_error (red-team wave 44). A bool is ordered against a bool only,
# equal to no number (no overload: a deny rule `args.level == 0` must not miss `false`), unequal
# to null, strings and lists, and takes part in no arithmetic. `string(true)` is "true" (it
# was Python's "True", and a deny rule `string(args.force) == 'true'` let the call through:
# red-team wave 45).
for _name in ("__lt__", "__le__", "__gt__", "__ge__"):
    setattr(celtypes.BoolType, _name, _bool_order(_name))
for _name in ("__eq__", "__ne__"):
    setattr(celtypes.BoolType, _name, _bool_equality(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(celtypes.BoolType, f"__{_name}__", _no_overload)
    setattr(celtypes.BoolType, f"__r{_name}__", _no_overload)
celtypes.BoolType.__str__ = _bool_text  # type: ignore[method-assign]


def _refusing_bools(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def refusing(self: Any, other: Any) -> Any:
        return _no_overload(self, other) if _is_bool(other) else method(self, other)

    return refusing


# ... and on the right of a number's operator: Python asks the left operand first, and the
# int's and double's own operators took a bool as 0 or 1 (`1000.0 >= args.amount`, `100u >=
# args.n`, `1 + args.n == 2` held for `true`: red-team wave 46). Numbers still order and add
# across int, uint and double as before.
for _number in (celtypes.IntType, celtypes.UintType, celtypes.DoubleType):
    for _name in ("lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod"):
        for _dunder in (f"__{_name}__", f"__r{_name}__"):
            _method = getattr(_number, _dunder, None)
            if _method is not None:
                setattr(_number, _dunder, _refusing_bools(_method))
# A list indexed by a bool (`args.l[args.b]` read element 1 for `true`) has no overload either.
celtypes.ListType.__getitem__ = _refusing_bools(list.__getitem__)  # type: ignore[method-assign]


def _string_new(cls: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
    """``string()`` of a list or a map has no overload in CEL; cel-python gave Python's
    text of it (``[BoolType(True)]``), which a rule could test (red-team wave 46)."""
    if isinstance(source, list | dict):
        raise TypeError(f"no such overload: string({type(source).__name__})")
    return _LIBRARY_STRING_NEW(cls, source, *args, **kwargs)


_LIBRARY_STRING_NEW = celtypes.StringType.__new__
celtypes.StringType.__new__ = _string_new  # type: ignore[method-assign]


#: What CEL's ``bool(string)`` reads (as cel-cpp does); cel-python took any integer text
#: (``bool("5")``, ``bool(" 7 ")``) as an int.
_BOOL_TEXTS = {
    **dict.fromkeys(("1", "t", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "false", "FALSE", "False"), False),
}
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_UINT_TEXT = re.compile(r"[0-9]+")


def _no_conversion(name: str, source: Any) -> TypeError:
    kind = "null" if source is None else type(source).__name__.removesuffix("Type").lower()
    return TypeError(f"no such overload: {name}({kind})")


def _integer(name: str, text: re.Pattern[str], kind: type) -> Callable[[Any], Any]:
    """CEL's ``int()`` or ``uint()``: of a number, a timestamp or a decimal string. Of null
    cel-python gave 0 and of a bool 0 or 1, so ``int(args.n) <= 100`` allowed ``"n": null``
    (red-team wave 58); of ``" 7 "``, ``"1_0"`` or ``"0x10"`` a number, where CEL has none."""

    def convert(source: Any) -> Any:
        if type(source) is int:  # a literal, every evaluation: the quick way
            return kind(source)
        if source is None or _is_bool(source):
            raise _no_conversion(name, source)
        if isinstance(source, str) and not text.fullmatch(source):
            raise ValueError(f"{name}({source[:40]!r}): not a decimal integer")
        return kind(source)

    return convert


_to_int = _integer("int", _INT_TEXT, celtypes.IntType)
_to_uint = _integer("uint", _UINT_TEXT, celtypes.UintType)


def _to_double(source: Any) -> Any:
    """CEL's ``double()``: of a number or a numeric string; null was 0.0, a bool 0.0 or 1.0."""
    if type(source) is float:
        return celtypes.DoubleType(source)
    if source is None or _is_bool(source):
        raise _no_conversion("double", source)
    if isinstance(source, str) and (source != source.strip() or "_" in source):
        raise ValueError(f"double({source[:40]!r}): not a number")
    return celtypes.DoubleType(source)


def _to_string(source: Any) -> Any:
    """CEL's ``string()``: of null there is none (cel-python gave ``"None"``)."""
    if source is None:
        raise _no_conversion("string", source)
    return celtypes.StringType(source)


def _to_bool(source: Any) -> Any:
    """CEL's ``bool()``: of a bool, or of a string CEL reads as one. cel-python gave false
    for null and a value for any number or integer text."""
    if _is_bool(source):
        return celtypes.BoolType(bool(source))
    if isinstance(source, str):
        read = _BOOL_TEXTS.get(str(source))
        if read is None:
            raise TypeError(f"no such overload: bool({source[:40]!r})")
        return celtypes.BoolType(read)
    raise _no_conversion("bool", source)


#: What CEL's ``timestamp(string)`` reads: RFC 3339, its offset required. cel-python read
#: anything pendulum parses: a time with no offset as UTC, a date alone, a time of today, ISO
#: weeks; a change freeze on ``timestamp(args.run_at)`` let a deploy at a local time inside
#: it through, where cel-google refused the rule's input (red-team wave 69).
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-][0-9]{2}):?([0-9]{2}))"
)
#: What ``duration(string)`` reads: a sign, then numbers each with a unit CEL has (h, m, s,
#: ms, us, ns); cel-python also read ``d`` (days), an error on cel-google.
_DURATION = re.compile(r"[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(h|ms|m|s|us|µs|ns))+")


class BadCelValue(ValueError):
    """A value CEL cannot take (``cel.bad_value``), as cel-google reports it."""


def _to_timestamp(source: Any, *args: Any, **kwargs: Any) -> Any:
    if not isinstance(source, str):
        return celtypes.TimestampType(source, *args, **kwargs)
    read = _RFC3339.fullmatch(source)
    if read is None:
        raise BadCelValue(f"timestamp({source[:40]!r}): not an RFC 3339 time with its offset")
    # what cel-google reads too (a lower-case T or Z, any digits of a second, an offset with
    # no colon), written as the library parses it
    day, time_of_day, fraction, zulu, hours, minutes = read.groups()
    offset = "Z" if zulu else f"{hours}:{minutes}"
    return celtypes.TimestampType(f"{day}T{time_of_day}{(fraction or '')[:10]}{offset}")


def _to_duration(source: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(source, str) and not _DURATION.fullmatch(source):
        raise BadCelValue(f"duration({source[:40]!r}): not a duration (h, m, s, ms, us, ns)")
    return celtypes.DurationType(source, *args, **kwargs)


#: The type conversions the transpiled code calls (``int(x)`` is ``IntType(x)`` there, as is
#: each literal), and ours in their place: the library's constructors also serve the library
#: itself, which may build a 0 from None, so they are swapped in our expressions only.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "IntType": _to_int,
    "UintType": _to_uint,
    "DoubleType": _to_double,
    "StringType": _to_string,
    "BoolType": _to_bool,
    "TimestampType": _to_timestamp,
    "DurationType": _to_duration,
}


def fix_has(source: str) -> str:
    return _HAS_LINE.sub(r"\1celpy.celtypes.BoolType(\2)", source)


# What StringType(text) and MapType(items) make for a str and a dict, without their type checks.
_new_str = str.__new__
_STRING = celtypes.StringType
_MAP = celtypes.MapType
_fill = dict.update


#: Items (of every list and object, nested ones included) one value may hold to become CEL:
#: converting is the slowest step of a decision (a microsecond an item), and a caller's
#: argument of a million numbers would hold the event loop for a second. Past it the value
#: cannot be read by a rule (``cel.bad_value``: the rule's error, a deny).
MAX_CEL_ITEMS = 50_000


def to_cel(value: Any) -> Any:
    """JSON-like Python values to cel-python's types, at most ``MAX_CEL_ITEMS`` items.

    Same result as ``celpy.adapter.json_to_cel`` for JSON values, dispatched on the exact
    type: the library's version tests ``isinstance`` against ``typing`` generics, which was a
    fifth of ``decide()``'s time. Raises ValueError past the size bound.
    """
    _budget.items = MAX_CEL_ITEMS
    return _to_cel(value)


def _count(items: int) -> None:
    _budget.items -= items
    if _budget.items < 0:
        raise ValueError(f"more than {MAX_CEL_ITEMS} items in lists and objects")


def _to_cel(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _new_str(_STRING, value)
    if kind is dict:
        _count(len(value))
        out = _MAP()  # filled as dicts are: its __init__ asks isinstance(..., Sequence) first
        _fill(out, {_to_cel(k): _to_cel(v) for k, v in value.items()})
        return out
    if kind is bool:
        return celtypes.BoolType(value)
    if kind is int:
        return celtypes.IntType(value)  # out of the int64 range: ValueError("overflow")
    if kind is float:
        return celtypes.DoubleType(value)
    if kind is list or kind is tuple:
        _count(len(value))
        return celtypes.ListType([_to_cel(item) for item in value])
    if value is None:
        return None
    return json_to_cel(value)  # anything else (subclasses, datetimes): the library decides
