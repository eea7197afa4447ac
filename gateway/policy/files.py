"""Rule files: which files of a folder are rules, and lines in them for CEL errors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import Problem
from gateway.located import Node, NotARuleFile, parse_source, read_regular
from gateway.policy.cel import CelCompileError

RULE_SUFFIXES = (".yaml", ".yml", ".json")
#: Policy test files live beside rules (``celgate test``) and are not rules themselves.
TEST_SUFFIXES = ("_test.yaml", "_test.yml", "_test.json", ".test.yaml", ".test.yml", ".test.json")


def rule_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Expand files and folders into (path, display name), folders sorted and recursive."""
    return [(path, display) for path, display, _ in labelled_files(paths)]


def labelled_files(paths: Iterable[str | Path]) -> list[tuple[Path, str, str]]:
    """(path, display name, label name): the label is relative to the folder given, or the
    file's own name when a file is given."""
    out: list[tuple[Path, str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found, unlisted = _under(path)
            for folder in unlisted:  # refused when read: "cannot read: Permission denied"
                out.append((folder, str(folder), folder.relative_to(path).as_posix()))
            for child in found:
                name = child.name.lower()  # Deny.YAML is a rule file too
                wanted = name.endswith(RULE_SUFFIXES) and (
                    not name.endswith(TEST_SUFFIXES) or holds_rules(child)
                )
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                # Not only regular files: a dangling symlink, a FIFO or a socket named as a
                # rule file is listed, and refused when read (its rules are not dropped).
                if wanted and not hidden and not child.is_dir():
                    out.append((child, str(child), child.relative_to(path).as_posix()))
        else:
            out.append((path, str(path), path.name))
    return out


#: A top-level key of a rule file that no policy test file has (those have ``policy``,
#: ``cases`` and ``description``), at the start of a line (YAML) or in a JSON object.
_RULE_KEYS = frozenset({"version", "default", "tools", "mode"})
_RULES_KEYS = frozenset({"version", "default", "tools", "mode"})
_RULES_WORD = re.compile(r"""["']?\b(version|default|tools|mode)\b["']?\s*:""")


def holds_rules(path: Path) -> bool:
    """Whether a file named as a policy test (``guard.test.yaml``, ``load_test.yaml``) holds
    rules: it was skipped as a test file without a word, and its deny rules with it
    (red-team wave 58); read as rules, it loads, or is refused with ``file:line``. The file
    is parsed, as the loader parses it: a line-start pattern missed the same keys in flow
    style (``{tools: ...}``), indented, or after a byte-order mark (wave 61). A file that
    does not parse is read as rules too, and so refused, when one of those keys is in it
    (``{tools: {x: {action: deny}}`` with a brace missing); one that cannot be read stays a
    test file (``celgate test`` says it cannot be read)."""
    try:
        text = read_regular(path)
    except (OSError, UnicodeDecodeError, NotARuleFile):
        return False
    problems: list[Problem] = []
    root = parse_source(text, path.suffix.lower() == ".json", str(path), problems)
    if root is None:
        return bool(problems) and _RULES_WORD.search(text) is not None
    return isinstance(root.value, dict) and bool(_RULES_KEYS & set(root.value))


def _under(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every path under ``folder``, sorted, symlinked folders followed (each real folder
    once: a link to a folder above ends there). ``rglob`` went into no symlinked folder, and
    a rules folder's linked subfolder was dropped without a word: under ``default: allow``
    its deny rules were gone (red-team wave 47). The folders that cannot be listed come
    second: each is refused when read as a rule file (its rules are not dropped)."""
    found: list[Path] = []
    unlisted: list[Path] = []
    seen = {folder.resolve()}
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            children = list(current.iterdir())
        except OSError:
            unlisted.append(current)
            continue
        for child in children:
            found.append(child)
            if child.is_dir():
                real = child.resolve()
                if real not in seen:
                    seen.add(real)
                    pending.append(child)
    return sorted(found), sorted(unlisted)


_BLOCK_HEADER = re.compile(r"[|>][0-9+-]*\s*(#.*)?$")


def cel_error_line(node: Node, exc: CelCompileError) -> int:
    """The file line of a CEL error. A block scalar (``when: >-`` or ``|``) starts on the line
    after its key and a folded one joins its lines, so the error's offset in the expression is
    mapped back onto the source lines (read again, on this error path only)."""
    first = node.where.line
    try:
        source = Path(node.where.file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return first + exc.line - 1
    if first > len(source) or not _BLOCK_HEADER.search(source[first - 1]):
        return first + exc.line - 1
    expr: str = node.value
    lines = expr.split("\n")
    offset = sum(len(text) + 1 for text in lines[: exc.line - 1]) + exc.column - 1
    found, pos = first + 1, 0
    for number, raw in enumerate(source[first:], start=first + 1):
        piece = raw.strip()
        if not piece:
            continue
        at = expr.find(piece, pos)
        if at < 0 or at > offset:
            break
        found, pos = number, at + len(piece)
    return found
