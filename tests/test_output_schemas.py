"""A listed tool's ``outputSchema`` is checked by ``gateway/edge/schemas.py``, in one walk: what
it keeps must be a schema both SDKs build a validator from (JSON Schema 2020-12's meta-schema,
as the Python SDK checks it; Ajv, as the TypeScript SDK compiles it when it lists tools), and
checking a list must cost little and bounded time (red-team wave 49: the meta-schema
validator took 18 ms a schema, and a list of 1,000 tools held every caller for 21 s).

Each side is held to the real thing: thousands of generated schemas and patterns, each kept
one checked by ``jsonschema``'s meta-schema validator and by the TypeScript SDK's own Ajv in
Node."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from gateway.edge import schemas
from gateway.edge.schemas import OutputSchemas, compiles, js_unicode_regex
from tests.peers import NODE, TS_DIR, TS_SDK, ts_sdk_ready

#: What wave 49 found Ajv refuses that the meta-schema validator took: the whole list failed.
AJV_REFUSED = {
    "inline flags": {"properties": {"a": {"type": "string", "pattern": "(?i)abc"}}},
    "python group": {"properties": {"a": {"type": "string", "pattern": "(?P<x>a)"}}},
    "python escape": {"properties": {"a": {"type": "string", "pattern": "\\Z"}}},
    "empty enum": {"properties": {"a": {"enum": []}}},
    "anchor twice": {"properties": {"a": {"$anchor": "x"}, "b": {"$anchor": "x"}}},
    "bad percent": {"properties": {"a%zz": {}, "b": {"$ref": "#/properties/a%zz"}}},
    "nested id": {
        "definitions": {"z": {"type": "string"}},
        "properties": {"a": {"$id": "http://other/a", "$ref": "#/definitions/z"}},
    },
    # wave 50
    "index of a leading zero": {"allOf": [{}], "properties": {"b": {"$ref": "#/allOf/01"}}},
    "index of another digit": {"allOf": [{}], "properties": {"b": {"$ref": "#/allOf/\u0661"}}},
    "encoded slash": {
        "definitions": {"a": {"b": {}}},
        "properties": {"x": {"$ref": "#/definitions/a%2Fb"}},
    },
    "cycle of refs": {
        "definitions": {"a": {"$ref": "#/definitions/b"}, "b": {"$ref": "#/definitions/a"}},
        "properties": {"x": {"$ref": "#/definitions/a"}},
    },
    "nullable without a type": {"properties": {"x": {"nullable": True, "allOf": [{}]}}},
    "surrogate pair in a class": {"properties": {"x": {"pattern": "[\\uD83D\\uDE00-\\uFFFF]"}}},
}
#: What the Python SDK refuses at each call (it reads the schema by its own ``$schema``).
PYTHON_REFUSED = {
    "draft-04": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": 5}},
    },
    "ref cycle at the root": {"$ref": "#"},
}
#: What both read, which an earlier check refused or crashed on (wave 50).
BOTH_READ = {
    "a tuple, as the TypeScript SDK's zod writes it": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {"t": {"type": "array", "items": [{"type": "string"}, {"type": "number"}]}},
    },
    "a huge bound": {"properties": {"n": {"type": "number", "maximum": 10**400}}},
    "recursion through properties": {
        "$defs": {"node": {"properties": {"kids": {"items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node",
    },
}
PATTERNS = [
    "^[a-z0-9_-]{3,16}$",
    "^\\d{3}-\\d{4}$",
    "^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$",
    "^(?:https?)://\\S+$",
    "(?<year>\\d{4})-\\k<year>",
    "(?<=a)b(?!c)",
    "^\\u00e9\\x41[\\-\\]]+$",
]
DRAFTS = ["http://json-schema.org/draft-07/schema#", "http://json-schema.org/draft-04/schema#"]
ALPHABET = [*list("ab()?:=!<>Pi[]{}12,*+\\dZkxu-^$|./0cBwsS"), "\\d", "{2}", "{1,3}", "(?:"]


def _pattern(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(PATTERNS)
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))


def _value(rng: random.Random, depth: int) -> Any:
    """A keyword's value: often of the right kind, often not."""
    pick = rng.randrange(11)
    if pick == 0:
        return rng.choice(["string", "object", "integer", "bogus", "null"])
    if pick == 1:
        return rng.choice([0, 1, -1, 2.5, 10**20])
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return rng.choice([[], ["a"], ["a", "a"], ["string", "null"], [1, 2]])
    if pick == 4:
        return _pattern(rng)
    if pick == 5:
        return rng.choice(["#", "#/properties/a", "#/$defs/n", "#/nope", "#x", "#/properties/a%zz"])
    if pick == 6:
        return rng.choice(["x", "_a.b", "1x", "http://e/x", "http://e/x#", "#f", *DRAFTS])
    if pick in (7, 8) and depth < 4:
        return {"a": _schema(rng, depth + 1), "n": _schema(rng, depth + 1)}
    if pick == 9 and depth < 4:
        return [_schema(rng, depth + 1) for _ in range(rng.randint(0, 2))]
    return _schema(rng, depth + 1) if depth < 4 else {}


KEYWORDS = [
    "type", "enum", "const", "pattern", "required", "properties", "patternProperties", "items",
    "prefixItems", "allOf", "anyOf", "oneOf", "not", "if", "then", "$defs", "definitions",
    "$ref", "$anchor", "$id", "minimum", "maxLength", "multipleOf", "additionalProperties",
    "dependentRequired", "dependencies", "format", "title", "uniqueItems", "examples",
    "default", "x-extra", "$dynamicRef", "minItems", "contains", "nullable", "$schema",
]  # fmt: skip


def _schema(rng: random.Random, depth: int = 0) -> Any:
    if depth and rng.random() < 0.1:
        return rng.choice([True, False])
    return {
        rng.choice(KEYWORDS): _value(rng, depth) for _ in range(rng.randint(0, 3 if depth else 5))
    }


def _meta_valid(schema: Any) -> bool:
    """As the Python SDK checks a schema: against the meta-schema its ``$schema`` names."""
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except (SchemaError, TypeError, AttributeError):  # (a "$schema" that is no text)
        return False
    return True


def _generated(count: int) -> list[Any]:
    rng = random.Random(49)
    return [_schema(rng) for _ in range(count)]


def test_what_is_kept_is_valid_against_the_meta_schema() -> None:
    generated = _generated(3000)
    kept = [schema for schema in generated if compiles(schema)]
    assert len(kept) > 300  # the check is not vacuous
    assert [s for s in kept if not _meta_valid(s)] == []
    # and it keeps most of what is valid: what it refuses besides is Ajv's or not followed
    valid = [s for s in generated if _meta_valid(s)]
    assert len(kept) > len(valid) // 2


def test_what_wave_49_found_is_refused() -> None:
    for name, schema in AJV_REFUSED.items():
        assert _meta_valid(schema), name  # the meta-schema takes each
        assert not compiles({"type": "object", **schema}), name
    for name, schema in PYTHON_REFUSED.items():
        assert not compiles({"type": "object", **schema}), name
    for name, schema in BOTH_READ.items():
        assert _meta_valid(schema) and compiles({"type": "object", **schema}), name
    assert not compiles({"type": "object", "properties": {"b": {"$ref": "#/allOf/\u00b2"}}})
    assert all(js_unicode_regex(p) for p in PATTERNS)
    assert not any(js_unicode_regex(p) for p in ["a{", "a++", "(?=a)*", "\\-", "a]", "(?#c)"])


def test_what_is_kept_compiles_in_the_typescript_sdk(tmp_path: Path) -> None:
    problem = ts_sdk_ready()
    assert problem is None, problem
    kept = [s for s in _generated(3000) if compiles(s)]
    kept += [{"type": "object", **s} for s in BOTH_READ.values()]
    refused = [{"type": "object", **s} for s in AJV_REFUSED.values()]  # the probe works
    rng = random.Random(7)
    patterns = [p for p in (_pattern(rng) for _ in range(4000)) if js_unicode_regex(p)]
    file = tmp_path / "probe.json"
    file.write_text(json.dumps({"schemas": kept + refused, "patterns": patterns}))
    argv = [str(NODE), str(TS_DIR / "ajv_compiles.mjs"), str(TS_SDK), str(file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    verdicts = json.loads(done.stdout)
    assert verdicts["schemas"][len(kept) :] == [False] * len(refused)
    assert [s for s, ok in zip(kept, verdicts["schemas"], strict=False) if not ok] == []
    assert len(patterns) > 200
    assert [p for p, ok in zip(patterns, verdicts["patterns"], strict=True) if not ok] == []


def _wide(fields: int, tag: int) -> dict[str, Any]:
    properties = {f"field_{j}_{tag}": {"type": "string", "pattern": "^a+$"} for j in range(fields)}
    return {"type": "object", "properties": properties}


def test_a_list_is_checked_within_its_budget_and_known_verdicts_are_free() -> None:
    # 1,000 distinct schemas of thirty properties each: within one list's budget
    budget = OutputSchemas()
    assert all(budget.compiles(_wide(30, tag)) for tag in range(1000))
    assert budget.over_budget == 0 and budget.remaining > 0
    # a list past its budget: the rest are left out this time, not remembered as refused
    small = OutputSchemas(budget=500)
    verdicts = [small.compiles(_wide(30, tag)) for tag in range(2000, 2010)]
    assert verdicts[0] and not verdicts[-1] and small.over_budget
    # listed again, what was checked costs nothing, and what was cut off is checked now
    again = OutputSchemas(budget=0)
    assert all(again.compiles(_wide(30, tag)) for tag in range(1000))
    assert again.over_budget == 0
    assert OutputSchemas().compiles(_wide(30, 2009))
    # one schema past the bound of a schema is refused, and that is remembered
    huge = {"type": "object", "properties": {f"p{i}": {} for i in range(schemas.MAX_NODES)}}
    assert not OutputSchemas().compiles(huge) and not OutputSchemas(budget=0).compiles(huge)


@pytest.mark.parametrize("depth", [10, 100, 10_000])
def test_deep_schemas_are_refused_not_crashed(depth: int) -> None:
    schema: Any = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"p": schema}}
    assert compiles(schema) is (depth < schemas.MAX_DEPTH // 3)
