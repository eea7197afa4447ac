"""Whether a tool's ``outputSchema`` is one both SDKs' clients build a validator from.

The TypeScript SDK compiles every listed tool's ``outputSchema`` (Ajv) when it lists tools,
and one that does not compile fails the whole list (on ``/mcp`` every server's); the Python
SDK checks a schema against JSON Schema 2020-12's meta-schema before it validates a result.
Checking each schema with ``jsonschema``'s meta-schema validator took 18 ms for thirty
plain properties: a list of 1,000 such tools held the event loop every caller shares for
21 s (red-team wave 49). This is the meta-schema's rules written out, one walk over the
schema, plus what Ajv refuses beyond them (an empty ``enum``, a ``pattern`` no JavaScript
``u`` regular expression reads, an ``$anchor`` given twice, a ``$ref`` of malformed
percent-encoding, an ``$id`` below the root). What is not recognised is refused: a tool
whose schema is refused is left out of its list, not the list with it.

``tests/test_output_schemas.py`` holds it to the meta-schema: what is kept here is valid
there."""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote

from gateway.wire.jsonrpc import json_bytes

#: Nodes (objects, lists, values) of one schema walked at most: past it, refused.
MAX_NODES = 20_000
#: Characters of one ``pattern`` read at most.
MAX_PATTERN = 8192
#: Nesting walked at most.
MAX_DEPTH = 64

_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
_ANCHOR = re.compile(r"[A-Za-z_][-A-Za-z0-9._]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"%2[Ff]")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}", re.ASCII)

#: Keywords whose value is one schema.
_SCHEMA = frozenset(
    {
        "items",
        "contains",
        "additionalProperties",
        "propertyNames",
        "if",
        "then",
        "else",
        "not",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contentSchema",
        "additionalItems",
    }
)
#: Keywords whose value is a non-empty list of schemas.
_SCHEMA_LIST = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})
#: Keywords whose value is an object of schemas.
_SCHEMA_MAP = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
)
_NUMBER = frozenset({"maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"})
_COUNT = frozenset(
    {
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "maxContains",
        "minContains",
        "maxProperties",
        "minProperties",
    }
)
_TEXT = frozenset(
    {"$comment", "title", "description", "format", "contentEncoding", "contentMediaType"}
)
#: Keywords whose values Ajv does not crawl for identifiers: data, not schemas.
_INERT = frozenset({"default", "enum", "const", "examples"})
#: (``nullable`` is OpenAPI's, which Ajv knows: true only beside a ``type``.)
_BOOLEAN = frozenset({"uniqueItems", "deprecated", "readOnly", "writeOnly", "nullable"})


class _Refused(Exception):
    pass


#: Nodes all the output schemas of one list walk at most (their verdicts already known are
#: free): a tool whose schema would go past it is left out, logged. A list of 1,000 tools of
#: thirty properties each walks about 100,000.
LIST_NODES = 400_000
#: Bytes of output schemas one list digests at most (to look their verdicts up): a list of
#: 45 MB spent 3 s on digests alone (red-team wave 50). 1,000 tools of thirty properties
#: are 1.5 MB.
LIST_DIGEST_BYTES = 16 * 1024 * 1024
#: Verdicts kept, by the digest of a schema's JSON: the same list listed again costs nothing.
_VERDICTS: OrderedDict[bytes, bool] = OrderedDict()
MAX_VERDICTS = 8192
#: The same of patterns (``MAX_PATTERN`` characters at most each).
_PATTERNS: dict[str, bool] = {}


class OutputSchemas:
    """The output schemas of one list, checked within ``LIST_NODES``."""

    def __init__(self, budget: int = LIST_NODES, digest_bytes: int = LIST_DIGEST_BYTES) -> None:
        self.remaining = budget
        self.digest_bytes = digest_bytes
        self.over_budget = 0

    def compiles(self, schema: Any) -> bool:
        """Whether ``schema`` (an ``outputSchema``) is one both SDKs build a validator
        from; False too past the list's budget (that tool is left out this time)."""
        if self.digest_bytes <= 0:
            self.over_budget += 1
            return False
        try:
            text = json_bytes(schema)
        except (TypeError, ValueError, RecursionError):
            return False
        self.digest_bytes -= len(text)
        key = hashlib.sha256(text).digest()
        known = _VERDICTS.get(key)
        if known is not None:
            _VERDICTS.move_to_end(key)
            return known
        if self.remaining <= 0:
            self.over_budget += 1
            return False
        walk = _Walk(min(MAX_NODES, self.remaining))
        verdict = walk.compiles(schema)
        self.remaining -= walk.nodes
        if walk.nodes > walk.limit and walk.limit < MAX_NODES:
            self.over_budget += 1
            return False  # not the schema's fault, maybe: not remembered
        _VERDICTS[key] = verdict
        if len(_VERDICTS) > MAX_VERDICTS:
            _VERDICTS.popitem(last=False)
        return verdict


def compiles(schema: Any) -> bool:
    """Whether ``schema`` (an ``outputSchema``) is one both SDKs build a validator from."""
    return _Walk(MAX_NODES).compiles(schema)


class _Walk:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nodes = 0
        self.refs: list[str] = []
        self.anchors: set[str] = set()
        self.walked: set[int] = set()
        self.draft: str | None = "2020-12"

    def _count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.limit or depth > MAX_DEPTH:
            raise _Refused

    def compiles(self, schema: Any) -> bool:
        try:
            if isinstance(schema, dict):
                self.draft = _draft(schema.get("$schema"))
            self.schema(schema, 0, root=True)
            at = 0
            ended: set[str] = set()  # refs whose chain of "$ref"s ends
            while at < len(self.refs):  # each "$ref" read where it points, as a schema
                target = _target(schema, self.refs[at])
                _need(self._chain_ends(schema, self.refs[at], ended))
                at += 1
                if isinstance(target, dict) and id(target) not in self.walked:
                    self.schema(target, 0)  # (a pointer into a keyword of no vocabulary)
                elif not isinstance(target, dict | bool):
                    return False
        except (_Refused, RecursionError, ValueError, OverflowError, TypeError):
            return False  # (a number or an index Python cannot take: refused, not raised)
        return True

    @staticmethod
    def _chain_ends(schema: dict[str, Any], ref: str, ended: set[str]) -> bool:
        """Whether following ``ref``, and the ``$ref`` of each schema it points to, ends: a
        cycle of them (``a`` is ``{"$ref": "#/$defs/a"}``) overflowed Ajv's stack and
        Python's."""
        path: list[str] = []
        while ref not in ended:
            if ref in path:
                return False
            path.append(ref)
            target = _target(schema, ref)
            if not (isinstance(target, dict) and isinstance(target.get("$ref"), str)):
                break
            ref = target["$ref"]
        ended.update(path)
        return True

    def schema(self, node: Any, depth: int, *, root: bool = False) -> None:
        self._count(depth)
        if isinstance(node, bool):
            return
        if not isinstance(node, dict):
            raise _Refused
        self.walked.add(id(node))
        self.nodes += len(node)  # each keyword counts
        if "nullable" in node:  # Ajv: no "nullable" without a "type", nor false beside "null"
            kinds = node.get("type")
            _need(kinds is not None and not (node["nullable"] is False and "null" in str(kinds)))
        for key, value in node.items():
            self.keyword(key, value, depth + 1, root)

    def keyword(self, key: str, value: Any, depth: int, root: bool) -> None:
        if key == "items" and isinstance(value, list) and self.draft == "draft-07":
            _need(value)  # a tuple, as drafts before 2020-12 give it (zod's, in the TS SDK)
            for sub in value:
                self.schema(sub, depth + 1)
        elif key in _SCHEMA:
            self.schema(value, depth)
        elif key in _SCHEMA_LIST:
            _need(isinstance(value, list) and value)
            for sub in value:
                self.schema(sub, depth + 1)
        elif key in _SCHEMA_MAP:
            _need(isinstance(value, dict))
            for name, sub in value.items():
                if key == "patternProperties":
                    _need(self.pattern(name))
                self.schema(sub, depth + 1)
        elif key == "dependencies":
            _need(isinstance(value, dict))
            for sub in value.values():
                if isinstance(sub, list):
                    self.texts(sub, depth + 1)
                else:
                    self.schema(sub, depth + 1)
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            _need(types and len(set(map(str, types))) == len(types))
            _need(all(isinstance(t, str) and t in _TYPES for t in types))
        elif key == "enum":  # the meta-schema takes an empty list; Ajv refuses it
            _need(isinstance(value, list) and value)
            self.values(value, depth)
        elif key in ("const", "default", "examples"):
            _need(key != "examples" or isinstance(value, list))
            self.values(value, depth)
        elif key == "multipleOf":
            _need(_number(value) and value > 0)
        elif key in _NUMBER:
            _need(_number(value))
        elif key in _COUNT:
            _need(_number(value) and value >= 0)
            _need(isinstance(value, int) or value.is_integer())
        elif key in ("required",):
            self.texts(value, depth)
        elif key == "dependentRequired":
            _need(isinstance(value, dict))
            for sub in value.values():
                self.texts(sub, depth + 1)
        elif key == "pattern":
            _need(isinstance(value, str) and self.pattern(value))
        elif key in _TEXT:
            _need(isinstance(value, str))
        elif key == "$schema":  # an older draft's rules, which Python checks by it: refused
            _need(root and isinstance(value, str) and _draft(value) is not None)
        elif key in _BOOLEAN:
            _need(isinstance(value, bool))
        elif key == "$ref":
            _need(isinstance(value, str))
            self.refs.append(value)
        elif key in ("$anchor", "$dynamicAnchor"):
            _need(isinstance(value, str))
            self.anchor(value)
        elif key == "$recursiveAnchor":
            _need(isinstance(value, str) and _ANCHOR.fullmatch(value))
        elif key == "$id":  # below the root it moves the base each "#/..." is read from
            _need(root and isinstance(value, str) and value.count("#") <= 1)
            _need(value.find("#") in (-1, len(value) - 1))
        elif key == "$vocabulary":
            _need(isinstance(value, dict) and all(isinstance(v, bool) for v in value.values()))
        elif key in ("$dynamicRef", "$recursiveRef"):
            raise _Refused  # resolved against where validation came from: not followed here
        else:  # a keyword no vocabulary defines: an annotation, any JSON value
            self.values(value, depth, crawled=True)

    def pattern(self, pattern: str) -> bool:
        """Whether ``pattern`` is a regular expression of both Python's and JavaScript's
        ``u`` grammar (the meta-schema's ``regex`` format, and Ajv); one not read before
        costs what compiling it does (about 100 nodes, and 4 a character)."""
        known = _PATTERNS.get(pattern)
        if known is not None:
            return known
        self.nodes += 100 + 4 * len(pattern)
        self._count(0)
        verdict = (
            len(pattern) <= MAX_PATTERN and _python_regex(pattern) and js_unicode_regex(pattern)
        )
        _PATTERNS[pattern] = verdict
        if len(_PATTERNS) > MAX_VERDICTS:
            _PATTERNS.pop(next(iter(_PATTERNS)))
        return verdict

    def texts(self, value: Any, depth: int) -> None:
        self._count(depth)
        _need(isinstance(value, list) and all(isinstance(v, str) for v in value))
        _need(len(set(value)) == len(value))

    def values(self, value: Any, depth: int, *, crawled: bool = False) -> None:
        """Any JSON value, walked to count it; one Ajv crawls for identifiers (``crawled``:
        an object under a keyword it does not know, and the objects under that but for
        ``_INERT`` keywords) has its ``$anchor`` checked and no ``$id``."""
        self._count(depth)
        if isinstance(value, dict):
            if crawled:
                _need("$id" not in value)
                for key in ("$anchor", "$dynamicAnchor"):
                    if isinstance(value.get(key), str):
                        self.anchor(value[key])
            for key, sub in value.items():
                self.values(sub, depth + 1, crawled=crawled and key not in _INERT)
        elif isinstance(value, list):
            for sub in value:
                self.values(sub, depth + 1, crawled=crawled)

    def anchor(self, name: str) -> None:
        """An anchor: of the meta-schema's form, and named once (Ajv refuses one twice)."""
        _need(_ANCHOR.fullmatch(name) and name not in self.anchors)
        self.anchors.add(name)


#: The drafts a ``$schema`` may name, as the Python SDK picks its validator by it (and Ajv
#: reads each as draft-07): 2020-12 (or none, or one not known: the newest) and those whose
#: ``items`` may be a tuple. Draft-04 and older mean other things by the same words
#: (``exclusiveMinimum: true``): refused.
_DRAFTS = {
    "http://json-schema.org/draft-07/schema": "draft-07",
    "http://json-schema.org/draft-06/schema": "draft-07",
    "https://json-schema.org/draft/2019-09/schema": "draft-07",
    "http://json-schema.org/draft-04/schema": None,
    "http://json-schema.org/draft-03/schema": None,
}


def _draft(named: Any) -> str | None:
    if not isinstance(named, str):
        return "2020-12"
    uri = named[:-1] if named.endswith("#") else named
    return _DRAFTS.get(uri, "2020-12")


def _need(condition: Any) -> None:
    if not condition:
        raise _Refused


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _python_regex(pattern: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "possible nested set" and the like: still valid
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError, ValueError):
            return False
    return True


_MISSING = object()


def _target(schema: dict[str, Any], ref: str) -> Any:
    """What ``ref`` points to in ``schema`` itself (``#`` or a JSON pointer ``#/...``,
    percent-decoded as a URI fragment is), or ``_MISSING``: another document, an anchor or a
    ``$dynamicRef`` is not fetched, not trusted."""
    if ref == "#":
        return schema
    if not ref.startswith("#/") or _PERCENT.search(ref) or _ENCODED_SLASH.search(ref):
        return _MISSING  # (an encoded "/": Ajv splits the pointer before it decodes)
    try:
        pointer = unquote(ref[2:], errors="strict")
    except UnicodeDecodeError:
        return _MISSING
    node: Any = schema
    for part in pointer.split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and _INDEX.fullmatch(key) and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


# A JavaScript regular expression of the ``u`` flag, as Ajv builds each ``pattern``: what is
# read here is what that grammar and Python's both take; anything else is refused.
_JS_IDENTITY = frozenset("^$\\.*+?()[]{}|/")
_JS_CLASS_ESCAPES = frozenset("dDwWsS")
_JS_CONTROL = frozenset("fnrtv")
_QUANTIFIER = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
_GROUP_NAME = re.compile(r"<([A-Za-z_$][A-Za-z0-9_$]*)>")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


def js_unicode_regex(pattern: str) -> bool:
    """Whether ``pattern`` is read by JavaScript's ``u``-flag grammar (as far as recognised
    here: escapes, groups, classes and quantifiers; Python's own syntax, ``(?P<x>)``, inline
    flags, ``\\Z``, possessive quantifiers, a lone ``{``, is not)."""
    i, n = 0, len(pattern)
    groups = 0
    names: set[str] = set()
    backrefs: list[int] = []
    named_refs: list[str] = []
    opened: list[str] = []
    quantifiable = False  # whether the last thing read may take a quantifier
    while i < n:
        c = pattern[i]
        if c == "\\":
            step = _js_escape(pattern, i, in_class=False, backrefs=backrefs, names=named_refs)
            if step is None:
                return False
            i, quantifiable = step, pattern[i + 1] not in "bB"
            continue
        if c == "[":
            end = _js_class(pattern, i)
            if end is None:
                return False
            i, quantifiable = end, True
            continue
        if c == "(":
            group = _js_group(pattern, i, names)
            if group is None:
                return False
            width, kind = group
            groups += kind == "capture"
            opened.append(kind)
            i, quantifiable = i + width, False
            continue
        if c == ")":
            if not opened:
                return False
            i, quantifiable = i + 1, opened.pop() != "look"  # (?=a)* : no quantified assertion
            continue
        if c in "*+?":
            if not quantifiable:
                return False
            i += 1
            if i < n and pattern[i] == "?":
                i += 1  # lazy
            quantifiable = False
            continue
        if c == "{":
            quantifier = _QUANTIFIER.match(pattern, i)
            if quantifier is None or not quantifiable:
                return False
            i = quantifier.end()
            if i < n and pattern[i] == "?":
                i += 1
            quantifiable = False
            continue
        if c in "}]":
            return False  # a lone bracket: a syntax error of the u flag
        # "|", "^", "$" take no quantifier; any other character is itself
        quantifiable = c not in "|^$"
        i += 1
    return (
        not opened
        and all(ref <= groups for ref in backrefs)
        and all(name in names for name in named_refs)
    )


def _js_group(pattern: str, i: int, names: set[str]) -> tuple[int, str] | None:
    """How long the opening of the group at ``i`` is and its kind (``capture``, ``group``
    or ``look``): ``(``, ``(?<name>``, ``(?:``, a lookahead or a lookbehind; None for any
    other ``(?`` (Python's ``(?P<x>``, inline flags, comments, atomic groups)."""
    if pattern[i + 1 : i + 2] != "?":
        return 1, "capture"
    rest = pattern[i + 2 : i + 4]
    if rest[:1] == ":":
        return 3, "group"
    if rest[:1] in ("=", "!"):
        return 3, "look"
    if rest in ("<=", "<!"):
        return 4, "look"
    named = _GROUP_NAME.match(pattern, i + 2)
    if named is None or named.group(1) in names:
        return None
    names.add(named.group(1))
    return named.end() - i, "capture"


def _js_escape(
    pattern: str, i: int, *, in_class: bool, backrefs: list[int], names: list[str]
) -> int | None:
    """Where the escape at ``i`` ends, or None for one the ``u`` flag refuses."""
    if i + 1 >= len(pattern):
        return None
    c = pattern[i + 1]
    if c in _JS_IDENTITY or c in _JS_CLASS_ESCAPES or c in _JS_CONTROL:
        return i + 2
    if c in "bB":
        return i + 2 if c == "b" or not in_class else None
    if c == "-" and in_class:
        return i + 2
    if c == "0":
        return None if pattern[i + 2 : i + 3].isdigit() else i + 2
    if c.isdigit() and c != "0" and c.isascii():
        if in_class:
            return None
        j = i + 1
        while j < len(pattern) and pattern[j].isascii() and pattern[j].isdigit():
            j += 1
        if j - i > 6:
            return None  # a group numbered past any pattern's
        backrefs.append(int(pattern[i + 1 : j]))
        return j
    if c == "x":
        return i + 4 if _HEX2.fullmatch(pattern[i + 2 : i + 4]) else None
    if c == "u":  # (one of a surrogate pair: u joins two into one character, Python not)
        code = pattern[i + 2 : i + 6]
        return i + 6 if _HEX4.fullmatch(code) and not 0xD800 <= int(code, 16) <= 0xDFFF else None
    if c == "c":
        letter = pattern[i + 2 : i + 3]
        return i + 3 if letter.isascii() and letter.isalpha() else None
    if c == "k" and not in_class:
        named = _GROUP_NAME.match(pattern, i + 2)
        if named is None:
            return None
        names.append(named.group(1))
        return named.end()
    return None


def _js_class(pattern: str, i: int) -> int | None:
    """Where the character class opened at ``i`` ends (after its ``]``), or None."""
    j = i + 1
    if pattern[j : j + 1] == "^":
        j += 1
    while j < len(pattern):
        c = pattern[j]
        if c == "]":
            return j + 1
        if c == "\\":
            step = _js_escape(pattern, j, in_class=True, backrefs=[], names=[])
            if step is None:
                return None
            j = step
            continue
        j += 1
    return None
