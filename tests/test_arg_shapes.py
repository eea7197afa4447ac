"""Argument types against a tool's inputSchema (``gateway.inventory.shapes``): the schemas the
SDKs write (pydantic's ``anyOf`` for optional values, ``$defs`` references, enums), what each
refuses and allows, and the bound on what one call can make it look at."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from gateway.inventory import shapes
from gateway.inventory.shapes import MAX_CHECKED, MAX_DEPTH, TooManyValues, mismatch, shape_of
from gateway.pipeline.enforce import check_arg_types
from gateway.policy import Call, decide, load_policy


class Target(BaseModel):
    host: str
    port: int


class Force(BaseModel):
    force: bool


class Named(BaseModel):
    name: str


class Params(BaseModel):
    recursive: bool
    envs: list[str]
    limit: int | None = None
    ratio: float = 1.0
    mode: Literal["fast", "safe"] = "safe"
    target: Target | None = None
    targets: list[Target] = []
    anything: Any = None
    quotas: dict[str, int] = {}
    pair: tuple[int, str] | None = None
    opts: Force | Named | None = None
    jobs: list[Force | Named] = []
    branch: str | None = None
    names: str | list[str] = "x"


SCHEMA = Params.model_json_schema()
SHAPE = shape_of(SCHEMA)
GOOD: dict[str, Any] = {"recursive": False, "envs": ["dev"]}


def why(**args: Any) -> str | None:
    assert SHAPE is not None
    return mismatch(SHAPE, {**GOOD, **args})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            {"recursive": "true"},
            "argument recursive is a string; SAYS boolean",
        ),
        ({"recursive": 1}, "argument recursive is an integer; SAYS boolean"),
        ({"envs": '["prod"]'}, "argument envs is a string; SAYS array"),
        (
            {"envs": ["dev", 7]},
            "argument envs[1] is an integer; SAYS string",
        ),
        (
            {"limit": "10"},
            "argument limit is a string; SAYS integer or null",
        ),
        ({"limit": 2.5}, "argument limit is a number; SAYS integer or null"),
        ({"ratio": "0.5"}, "argument ratio is a string; SAYS number"),
        ({"mode": 1}, "argument mode is an integer; SAYS string"),
        ({"target": {"host": "h", "port": "80"}}, "argument target.port is a string"),
        ({"targets": [{"host": "h", "port": 1}, {"host": 2, "port": 1}]}, "targets[1].host"),
        (
            {"target": "h:80"},
            "argument target is a string; SAYS null or object",
        ),
        ({"quotas": {"cpu": "8"}}, "argument quotas.cpu is a string; SAYS integer"),
        ({"pair": [1, 2]}, "argument pair[1] is an integer; SAYS string"),
        ({"opts": {"force": "true"}}, "argument opts.force is a string; SAYS boolean"),
        ({"jobs": [{"name": "a"}, {"force": 1}]}, "argument jobs[1].force is an integer"),
        ({"jobs": [{"force": "true"}]}, "argument jobs[0].force is a string; SAYS boolean"),
        ({"opts": {"path": "/"}}, "argument opts fits none of its forms"),
        ({"branch": "null"}, "argument branch is JSON text of null: send the value itself"),
        ({"names": '["a", "b"]'}, "argument names is JSON text of an array"),
    ],
)
def test_a_type_the_upstream_would_convert_is_refused(args: dict[str, Any], expected: str) -> None:
    found = why(**args)
    assert found is not None and expected.replace("SAYS", "the tool's inputSchema says") in found


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"limit": None, "ratio": 2, "mode": "fast"},
        {"limit": 3.0},  # an integral number is an integer to JSON Schema (and to pydantic)
        {"target": None, "targets": [{"host": "h", "port": 1, "extra": "kept"}]},
        {"anything": {"deep": ["x", 1, None]}, "unknown_key": "the upstream decides"},
        {"quotas": {"cpu": 8, "mem": 2}, "pair": [1, "x"]},
        {"opts": {"force": True}, "jobs": [{"name": "a"}, {"force": False}], "branch": "dev"},
        {"names": ["a"], "branch": None, "opts": None},
        {"names": "[not json", "branch": "nullable"},
    ],
)
def test_what_the_schema_allows_passes(args: dict[str, Any]) -> None:
    assert why(**args) is None


def test_schemas_that_say_nothing_check_nothing() -> None:
    assert shape_of({"type": "object"}) is None
    assert shape_of(None) is None
    assert (
        shape_of({"type": "object", "properties": {"x": {"$ref": "https://far/away"}}}) is not None
    )
    loose = shape_of({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {}]}}})
    assert loose is not None and mismatch(loose, {"x": 5}) is None
    odd = shape_of({"type": "object", "properties": {"x": {"type": "strnig"}}})
    assert odd is not None and mismatch(odd, {"x": 5}) is None


def test_a_self_referencing_schema_ends() -> None:
    schema = {"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}}
    schema.update({"$ref": "#/$defs/N"})
    shape = shape_of(schema)
    assert shape is not None and mismatch(shape, {"next": {"next": {"next": 1}}}) is not None


def test_a_schema_whose_references_branch_is_made_in_bounded_work() -> None:
    """Ten properties each referring back: 10**16 parts if followed to the depth bound."""
    node = {"type": "object", "properties": {f"p{i}": {"$ref": "#/$defs/N"} for i in range(10)}}
    shape = shape_of({"$defs": {"N": node}, **node})
    assert shape is not None and mismatch(shape, {"p1": {"p2": "not an object"}}) is not None


def test_a_reference_path_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 400-step path that refers to itself, named by 1,000 properties (29 KB of schema):
    each hop of each property walked the path again, ten seconds of the loop every caller
    shares at each ``tools/list``."""
    path = "#/" + "/".join(["a"] * 400)
    root: dict[str, Any] = {"type": "object", "s": {"$ref": path}}
    leaf = root
    for _ in range(400):
        leaf["a"] = {}
        leaf = leaf["a"]
    leaf["$ref"] = path
    root["properties"] = {f"p{i}": {"$ref": "#/s"} for i in range(1000)}
    walked: list[str] = []
    resolve = shapes._resolve

    def counted(ref: str, schema: Any) -> Any:
        walked.append(ref)
        return resolve(ref, schema)

    monkeypatch.setattr(shapes, "_resolve", counted)
    shape_of(root)
    assert sorted(walked) == [path, "#/s"]


def test_what_one_call_makes_it_look_at_is_bounded() -> None:
    assert SHAPE is not None
    mismatch(SHAPE, {**GOOD, "envs": ["x"] * (MAX_CHECKED - 10)})
    with pytest.raises(TooManyValues):
        mismatch(SHAPE, {**GOOD, "envs": ["x"] * MAX_CHECKED})
    nested = {"$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}}}
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH + 5):
        deep = {"n": deep}
    shape = shape_of({**nested, "$ref": "#/$defs/N"})
    assert shape is not None
    with pytest.raises(TooManyValues):
        mismatch(shape, deep)


def test_a_condition_that_failed_on_a_mistyped_argument_gives_the_arguments_reason() -> None:
    """``add(a="5")`` under a rule on ``args.a`` was refused with ``cel.type_error`` ("a
    condition could not be evaluated"): the docs promise the types are checked before any
    rule, with a reason naming the argument. A plain denial by a rule stands."""
    policy = (
        'version: "1"\ntools:\n  add:\n    rules:\n      - {when: "args.a > 3", action: allow}\n'
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.yaml"
        path.write_text(policy)
        compiled = load_policy([path])
    gw: Any = SimpleNamespace(arg_shapes={("s", "add"): shape_of(ADD_SCHEMA)})
    mistyped = Call("add", server="s", args={"a": "5"})
    decided = decide(compiled, mistyped)
    assert decided.error is not None and decided.error.startswith("cel.")
    checked = check_arg_types(gw, mistyped, decided)
    assert (checked.error, checked.rule) == ("argument_type", "schema")
    assert "argument a is a string" in checked.reason
    plain = Call("add", server="s", args={"a": 1})
    refused = decide(compiled, plain)
    assert check_arg_types(gw, plain, refused) == refused


ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "number"}}}
