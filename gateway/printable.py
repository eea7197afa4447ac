"""Text from outside (an upstream's tool names, a child's stderr, an agent's arguments) as a
terminal may show it."""

from __future__ import annotations

import re

# Characters that draw nothing yet are printable to Python (``str.isprintable``): Unicode's
# Default_Ignorable_Code_Point (combining grapheme joiner, Hangul fillers, variation selectors,
# Mongolian selectors, tags...). A run of them after one visible letter can carry a payload
# an approver never sees. Python's non-printable set (controls, format characters such as
# bidi overrides and zero-width joiners, separators, unassigned) is escaped besides.
_DRAWS_NOTHING = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def visible(text: str) -> bool:
    """Whether every character of ``text`` draws as itself (no control, no format or
    invisible character)."""
    return text.isprintable() and _DRAWS_NOTHING.search(text) is None


def printable(value: object) -> str:
    """``value`` as text with its control and invisible characters escaped (``\\x1b``,
    ``\\r``, ``\\u034f``...): such a text can neither rewrite an operator's screen, forge a
    line or a table row, nor hide what it says."""
    text = str(value)
    if visible(text):
        return text
    return "".join(c if visible(c) else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    shown = repr(char)[1:-1]  # Python's escape (\\r, \\x1b, \\u202e) where it has one
    if shown != char:
        return shown
    code = ord(char)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
