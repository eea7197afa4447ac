"""Text from outside (an upstream's tool names, a child's stderr) as a terminal may show it."""

from __future__ import annotations


def printable(value: object) -> str:
    """``value`` as text with its control characters escaped (``\\x1b``, ``\\r``...): such a
    text can neither rewrite an operator's screen nor forge a line or a table row."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
