"""YAML and JSON documents loaded with the line of every value, for errors with file:line.

Both formats go through PyYAML's composer (JSON is read as YAML flow style), so one walker
gives every mapping key, list item and scalar its 1-based line. Whatever the input, parsing
ends in a ``Node`` or in problems, never in an exception:

- Duplicate mapping keys are an error: parsers disagree on which one wins, and an operator's
  typo must not pass silently.
- Merge keys (``<<:``) are refused rather than merged: what a merged entry says should be
  readable where it is written.
- Keys are strings. A key YAML reads as something else (``2001-01-01``, ``404``, ``yes``,
  ``~``) is an error asking for quotes, never converted: ``on`` read as ``True`` and turned back
  into ``"True"`` would name another tool.
- Values are str, int, float, bool or null; a date, bytes (``!!binary``), a set, an ordered
  map or any other tag is an error, as is a value PyYAML cannot build (``2001-13-45``).
- Nesting is capped (``MAX_DEPTH``), and so is the number of values after aliases are
  expanded (``MAX_VALUES``), so a deep document or an alias bomb is a problem, not a
  RecursionError or a stalled process.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import Problem, SourceLocation

#: Mappings and lists nested deeper than this are refused (rule files need about 6).
MAX_DEPTH = 64
#: Values in one document, aliases expanded: far above any real rule file.
MAX_VALUES = 200_000

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SCALARS = (str, int, float, bool, type(None))


@dataclass(slots=True)
class Node:
    """A value with its location. ``value`` is a dict of Nodes, a list of Nodes or a scalar."""

    value: Any
    where: SourceLocation
    key_lines: dict[str, int] = field(default_factory=dict)

    def plain(self) -> Any:
        """The value without locations (for hashing and display)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


class _TooDeep(yaml.MarkedYAMLError):
    """Raised by the composer past ``MAX_DEPTH``, before Python's own recursion limit."""


class _Composer(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting depth counted while the tree is built."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Stop(Exception):
    """The document expands past ``MAX_VALUES``: the walk ends with that one problem."""


def _kind(value: Any) -> str:
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


class _Walker:
    def __init__(self, file: str, problems: list[Problem], text_checked: bool = True) -> None:
        self.file = file
        self.problems = problems
        self.text_checked = text_checked  # JSON's strings are checked as JSON reads them
        self.values = 0
        self._scalars = yaml.SafeLoader("")

    def where(self, node: yaml.Node) -> SourceLocation:
        return SourceLocation(self.file, node.start_mark.line + 1)

    def problem(self, node: yaml.Node, path: str, message: str) -> None:
        self.problems.append(Problem(self.where(node), path, message))

    def walk(self, node: yaml.Node, path: str, depth: int = 1) -> Node:
        self.values += 1
        if self.values > MAX_VALUES:
            self.problem(node, path, f"more than {MAX_VALUES} values (aliases expanded)")
            raise _Stop
        if depth > MAX_DEPTH:  # reached through aliases: the composer counted the rest
            self.problem(node, path, f"nested deeper than {MAX_DEPTH} levels")
            return Node(None, self.where(node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                return self._bad_tag(node, path)
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                return self._bad_tag(node, path)
            items = [self.walk(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node.value)]
            return Node(items, self.where(node))
        return Node(self._scalar(node, path), self.where(node))

    def _bad_tag(self, node: yaml.Node, path: str) -> Node:
        self.problem(node, path or "(top level)", f"unsupported tag {node.tag!r}")
        return Node(None, self.where(node))

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        """A plain value, or None with a problem added."""
        shown = path or "(top level)"
        if node.tag == _MERGE:
            self.problem(node, shown, "merge keys (<<) are not supported; write the fields out")
            return None
        try:
            value = self._scalars.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            reason = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            self.problem(node, shown, f"cannot read {node.value!r}: {reason}")
            return None
        if not isinstance(value, _SCALARS):
            message = f"{_kind(value)} is not allowed here (quote it to make it a string)"
            self.problem(node, shown, message)
            return None
        if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf, 1e999
            self.problem(node, shown, f"{node.value!r} is not a finite number")
            return None
        if self.text_checked and isinstance(value, str) and not _is_text(value):  # "\\ud83d"
            self.problem(node, shown, "a string that is no Unicode text (a lone surrogate)")
            return None
        # A CEL condition may name any character (a rule that denies one): not checked.
        checked = isinstance(value, str) and not path.endswith(".when")
        control = _CONTROL.search(value) if checked and isinstance(value, str) else None
        if control is not None:  # written as an escape ("\\x1b[2J"): the reader took it
            code = f"U+{ord(control[0]):04X}"
            self.problem(node, shown, f"control character {code} in a string is not allowed")
            return None
        return value

    def _key(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path or "(top level)", "a key must be a string, not a collection")
            return None
        if node.tag == _MERGE:
            self._scalar(node, path)
            return None
        key = self._scalar(node, path)
        if key is None and node.tag != "tag:yaml.org,2002:null":
            return None  # already reported
        if not isinstance(key, str):
            self.problem(
                node, path or "(top level)", f"key {node.value!r} must be a string; quote it"
            )
            return None
        return key

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> Node:
        out: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            sub = f"{path}.{key}" if path else key
            if key in out:
                first = lines[key]
                msg = f"duplicate key (first at line {first})"
                self.problems.append(Problem(self.where(key_node), sub, msg))
                continue
            lines[key] = key_node.start_mark.line + 1
            out[key] = self.walk(value_node, sub, depth + 1)
        return Node(out, self.where(node), lines)


def _syntax_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        return Problem(SourceLocation(file, line), "", f"syntax error: {exc.problem}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character
        code = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return Problem(SourceLocation(file, line), "", f"character {code} is not allowed")
    return Problem(SourceLocation(file, 1), "", f"syntax error: {type(exc).__name__}")


def _compose(text: str) -> yaml.Node | None:
    composer = _Composer(text)  # the reader refuses control characters here
    try:
        node: yaml.Node | None = composer.get_single_node()
    finally:
        composer.dispose()
    return node


def parse_text(
    text: str, file: str, problems: list[Problem], *, text_checked: bool = True
) -> Node | None:
    """Parse YAML or JSON text; every problem is added to ``problems``.

    None when the text does not parse (or expands past ``MAX_VALUES``); a Node otherwise,
    with any value that could not be read replaced by null and reported.
    An empty document (nothing, or only comments) gives an empty mapping.
    """
    try:
        root = _compose(text)
    except yaml.YAMLError as exc:
        problems.append(_syntax_problem(exc, text, file))
        return None
    except RecursionError:  # below MAX_DEPTH when the caller's stack is already deep
        problems.append(Problem(SourceLocation(file, 1), "", "nested too deeply"))
        return None
    if root is None:
        return Node({}, SourceLocation(file, 1))
    try:
        return _Walker(file, problems, text_checked).walk(root, "")
    except _Stop:
        return None
    except RecursionError:
        problems.append(Problem(SourceLocation(file, 1), "", "nested too deeply"))
        return None


def parse_file(path: Path, problems: list[Problem], display: str | None = None) -> Node | None:
    """Read and parse one file; a JSON file is also checked by the strict JSON parser."""
    name = display or str(path)
    try:
        text = read_regular(path)
    except (OSError, UnicodeDecodeError, NotARuleFile) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(Problem(SourceLocation(name, 1), "", f"cannot read: {reason}"))
        return None
    return parse_source(text, path.suffix.lower() == ".json", name, problems)


#: A config or rule file is a few kilobytes; past this it is refused, not parsed (parsing runs
#: where the gateway serves, and a reload must not hold every call for seconds).
MAX_FILE_BYTES = 1024 * 1024


class NotARuleFile(Exception):
    pass


def read_regular(path: Path) -> str:
    """A regular file's text, opened without blocking (a FIFO put in a file's place would
    hold the reader, and so the gateway, until someone writes to it), at most
    ``MAX_FILE_BYTES``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARuleFile("not a regular file")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise NotARuleFile(f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8")


def parse_source(text: str, is_json: bool, file: str, problems: list[Problem]) -> Node | None:
    """Parse text already read. JSON (``is_json``) is parsed by the strict JSON parser too,
    and its values are that parser's: PyYAML gives the lines only. Read as YAML, JSON means
    other things: ``"\\ud83d\\udca5"`` (one emoji, as ``json.dump`` writes it) became two
    lone surrogates, a raw U+0085 inside a string a folded line break, ``1e5`` a string; a
    rule matching the emoji never matched."""
    if is_json:
        try:
            value = json.loads(text, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(SourceLocation(file, exc.lineno), "", f"invalid JSON: {exc.msg}")
            )
            return None
        except (ValueError, RecursionError) as exc:  # 5000-digit numbers, 100k-deep arrays
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            problems.append(Problem(SourceLocation(file, 1), "", f"invalid JSON: {reason}"))
            return None
        node = parse_text(text, file, problems, text_checked=False)
        return None if node is None else _json_values(node, value, problems)
    return parse_text(text, file, problems)


def _not_json(constant: str) -> Any:
    """Python's JSON parser takes NaN, Infinity and -Infinity, which JSON does not have."""
    raise ValueError(f"{constant} is not JSON")


def _json_values(node: Node, value: Any, problems: list[Problem]) -> Node:
    """``node`` (PyYAML's reading, for its lines) with the JSON parser's keys and values. The
    two readings have the same shape, item for item and key for key in order (a duplicate
    key is refused by the walker); a string that is no Unicode text (a lone surrogate) is a
    problem, as anywhere else."""
    if isinstance(node.value, dict) and isinstance(value, dict):
        out: dict[str, Node] = {}
        lines: dict[str, int] = {}
        if len(value) != len(node.value):  # keys alike only as JSON reads them ("\\ud83d\\udca5")
            problems.append(Problem(node.where, "", "duplicate key (as the JSON parser reads it)"))
        pairs = zip(node.value.items(), value.items(), strict=False)
        for (key, child), (json_key, json_child) in pairs:
            _unicode(json_key, node.where, problems)
            out[json_key] = _json_values(child, json_child, problems)
            lines[json_key] = node.key_lines.get(key, node.where.line)
        return Node(out, node.where, lines)
    if isinstance(node.value, list) and isinstance(value, list):
        items = [_json_values(c, v, problems) for c, v in zip(node.value, value, strict=True)]
        return Node(items, node.where)
    if isinstance(value, (dict, list)) or isinstance(node.value, (dict, list)):
        problems.append(Problem(node.where, "", "the JSON parser reads this value otherwise"))
        return Node(None, node.where)
    _unicode(value, node.where, problems)
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 (NaN: refused above)
        problems.append(Problem(node.where, "", f"{value!r} is not a finite number"))
        return Node(None, node.where)
    return Node(value, node.where)


def _unicode(value: Any, where: SourceLocation, problems: list[Problem]) -> None:
    if isinstance(value, str) and not _is_text(value):
        msg = "a string that is no Unicode text (a lone surrogate)"
        problems.append(Problem(where, "", msg))


#: Control characters a string may not hold, however written (tab and line ends aside): an
#: escaped one in a reason reached agents as written (a terminal's escape sequence).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
