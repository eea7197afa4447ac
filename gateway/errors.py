"""Typed errors of the gateway, mapped to the wire in one place (``gateway.edge.replies``).

::

    GatewayError
     ├── ConfigError              a rule file or config file is wrong (every problem listed)
     ├── PolicyEvalError          a CEL condition failed at call time (the call is denied)
     ├── BackendUnavailable       Valkey (limits, approvals) cannot be reached
     ├── UpstreamError            an upstream MCP server is down, refused or died mid-stream
     └── ApprovalError            an approval id is unknown, expired or already decided

Only the messages of these classes are ever shown to a client, and only where the edge says
so; an unexpected exception is logged and answered with a generic internal error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a value came from: a file and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One load problem: where, which field, and what is wrong."""

    where: SourceLocation
    field: str
    message: str

    def __str__(self) -> str:
        prefix = f"{self.where}: {self.field}: " if self.field else f"{self.where}: "
        return prefix + self.message


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A policy or config could not be loaded; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.where.file, p.where.line, p.field))
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyEvalError(GatewayError):
    """A CEL program could not produce a boolean for this call."""

    def __init__(self, code: str, expression: str, detail: str) -> None:
        self.code = code
        self.expression = expression
        self.detail = detail
        super().__init__(f"{code}: {detail} in `{expression}`")


class BackendUnavailable(GatewayError):
    """The shared state backend (Valkey) could not be reached or answered an error."""


class UpstreamError(GatewayError):
    """An upstream MCP server could not be reached or failed while answering."""


class ApprovalError(GatewayError):
    """An approval request is unknown, expired, already used or already decided."""
