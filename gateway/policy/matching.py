"""Which ``tools`` entry applies to a call.

Order, most specific first: a server-qualified entry (``server/tool``) before a bare one, then
an exact name before a glob, then the glob with more literal characters. Two globs at the same
level with as many literal characters that can match one same name are a load error, so the
order never depends on file order. Globs know ``*`` (any run) and ``?`` (one character).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import cache

from gateway.policy.model import CompiledPolicy, ToolEntry


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def glob_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def split_key(key: str) -> tuple[str | None, str]:
    """``redshift/execute_query`` -> (``redshift``, ``execute_query``); bare: no server."""
    server, sep, tool = key.partition("/")
    return (server, tool) if sep else (None, key)


def globs_overlap(a: str, b: str) -> bool:
    """True when some name matches both globs."""

    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*" and (meet(i + 1, j) or (j < len(b) and meet(i, j + 1))):
            return True
        if j < len(b) and b[j] == "*" and (meet(i, j + 1) or (i < len(a) and meet(i + 1, j))):
            return True
        if i < len(a) and j < len(b) and a[i] != "*" and b[j] != "*":
            return (a[i] == b[j] or "?" in (a[i], b[j])) and meet(i + 1, j + 1)
        return False

    return meet(0, 0)


def fold(name: str) -> str:
    """A tool name as a server that matches names loosely may read it: compatibility forms
    decomposed and accents dropped (``wípe`` is ``wipe``), case folded both ways (the dotless
    ``\\u0131`` upper-cases to ``I``), and only letters and digits kept (``wipe records``,
    ``wipe.records``, ``wipeRecords`` and ``wipe_records`` are one). NFKC, case and the ends'
    spaces alone let ``w\\u0131pe_records`` and ``wipe records`` reach a server comparing names
    with ``equalsIgnoreCase`` or stripping separators (red-team wave 39). A name of no
    letter or digit is its own."""
    return _folded(name) or name


def _folded(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in letters.upper().lower().casefold() if c.isalnum())


@cache
def folded_glob(pattern: str) -> re.Pattern[str]:
    """A glob as ``fold`` reads names: its literal runs folded, each wildcard any run (a
    ``?`` too: what it stood for may be a separator, which folding drops)."""
    runs = re.split(r"[*?]+", pattern)
    return re.compile(".*".join(re.escape(_folded(run)) for run in runs), re.DOTALL)


def candidates(policy: CompiledPolicy, server: str | None, tool: str) -> Iterator[ToolEntry]:
    """Entries matching the call, most specific first."""
    if server is not None:
        entry = policy.exact.get((server, tool))
        if entry is not None:
            yield entry
        for glob in policy.globs:
            if glob.server == server and glob.matches(tool):
                yield glob
    entry = policy.exact.get((None, tool))
    if entry is not None:
        yield entry
    for glob in policy.globs:
        if glob.server is None and glob.matches(tool):
            yield glob
