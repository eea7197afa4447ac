"""Space-separated claims (``scope``, a string of roles) are split on U+0020 alone.

``str.split()`` also split on NBSP, U+2003, U+3000 and the like: one IdP role or group named
``intern<NBSP>admin`` became the roles ``intern`` and ``admin``, and passed
``"admin" in agent.roles``; a scope ``read<NBSP>mcp:github`` granted ``mcp:github``
(red-team wave 38).
"""

from __future__ import annotations

from gateway.auth.tokens import scopes_of, spaced


def test_only_a_plain_space_separates() -> None:
    assert spaced("intern\u00a0admin") == ["intern\u00a0admin"]
    assert spaced("a  b ") == ["a", "b"]
    assert scopes_of({"scope": "read\u3000mcp:github mcp"}) == {"read\u3000mcp:github", "mcp"}
    assert scopes_of({"scp": ["mcp", 3]}) == {"mcp"}
