"""celgate: an MCP policy gateway."""

__version__ = "0.1.0"
