"""What a tool's name may be, for a call and for a list alike: a name no call could use is
never shown to an agent."""

from __future__ import annotations

from gateway.printable import visible

#: A tool name past this is refused before any policy: MCP recommends 128 characters at most,
#: and the name is in every record kept (500 in memory) and in every line logged.
MAX_TOOL_NAME = 1024


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a tool's name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "tools/call needs a tool name"
    if len(name) > MAX_TOOL_NAME:
        return f"a tool name is at most {MAX_TOOL_NAME} characters"
    if not visible(name):  # a control, bidi or invisible character: no tool's name
        return "a tool name cannot hold control or invisible characters"
    return None
