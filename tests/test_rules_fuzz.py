"""Whatever bytes a rule file holds, loading gives a policy or a ConfigError whose every problem
is located in that file; no other exception escapes the loader."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.policy import load_policy

_LOCATED = re.compile(r"^r\.(yaml|json):\d+: ")
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_WORDS = ["tools", "default", "rules", "when", "action", "allow", "deny", "limits", "<<", "~"]
_SNIPPETS = [
    "!!binary aGk=",
    "!!set {a}",
    "&a [1]",
    "*a",
    "2001-13-45",
    "2001-01-01",
    "!!python/name:os.system ''",
    "'args.x > 1'",
    "'args.q.matches(\"(\")'",
    "{}",
    "",
    "\x07",
    "[[[[",
]
_scalar = st.one_of(
    st.sampled_from(_WORDS + _SNIPPETS),
    st.integers(),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)


def _tree() -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalar,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=6), inner, max_size=4),
        ),
        max_leaves=20,
    )


def _load(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            load_policy([path])
        except ConfigError as exc:
            assert exc.problems
            for problem in exc.problems:
                shown = str(problem).replace(folder + "/", "")
                assert _LOCATED.match(shown), shown


class TestFuzz:
    @_SETTINGS
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        _load("r.yaml", data)

    @_SETTINGS
    @given(st.text(alphabet=st.sampled_from(list("tols:{}[]-&*!<>'\"#\n ,?|ab1~")), max_size=200))
    def test_yamlish_text(self, text: str) -> None:
        _load("r.yaml", text.encode("utf-8", "surrogatepass"))

    @_SETTINGS
    @given(_tree(), st.lists(st.sampled_from(_SNIPPETS), max_size=3))
    def test_structures_with_odd_pieces(self, tree: Any, pieces: list[str]) -> None:
        text = yaml.safe_dump({"tools": tree}, allow_unicode=True)
        lines = text.splitlines()
        for i, piece in enumerate(pieces):  # splice raw snippets in as values
            at = (i * 7) % max(len(lines), 1)
            lines.insert(at, f"  x{i}: {piece}")
        _load("r.yaml", "\n".join(lines).encode("utf-8", "surrogatepass"))

    @_SETTINGS
    @given(_tree())
    def test_json_structures(self, tree: Any) -> None:
        _load("r.json", json.dumps({"tools": tree}).encode())
