"""Typed errors of the gateway, mapped to the wire in one place (``gateway.edge.replies``).

::

    GatewayError
     ├── ConfigError              a rule file or config file is wrong (every problem listed)
     ├── PolicyEvalError          a CEL condition failed at call time (the call is denied)
     ├── BackendUnavailable       Valkey (limits, approvals) cannot be reached or answered an
     │                            error (ValkeyError, OSError mapped where they arise)
     ├── KeySetUnavailable        the identity provider's metadata or keys cannot be had
     ├── UpstreamError            an upstream MCP server is down, refused or died mid-stream
     │    └── UpstreamIOError     the connection failed or closed early (also an OSError)
     │         └── UpstreamTimeout   the answer's head came too late (also a TimeoutError)
     └── ApprovalError            an approval id is unknown, expired or already decided

Beside the tree, at the wire (which imports nothing of gateway): ``gateway.wire.jsonrpc``'s
``BadMessage`` (a request refused with its JSON-RPC code and HTTP status, the parser's errors
mapped to it where they arise) and ``gateway.wire.sse.StreamTooLarge``. Load-time problems
(YAML/JSON, CEL that does not compile) are collected into one ``ConfigError``.

``gateway.edge.replies.error_reply`` turns any of them into a JSON-RPC error; only the
messages of these classes are ever shown to a client, and an unexpected exception is logged
and answered with a generic internal error.
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


#: Characters of an engine's message kept (``error_detail`` in a record): the engine writes
#: operands into it, and an argument of 4 MB made every record, log line and the 500 kept
#: for the admin API 4 MB (2 GB held).
MAX_DETAIL = 500


class PolicyEvalError(GatewayError):
    """A CEL program could not produce a boolean for this call."""

    def __init__(self, code: str, expression: str, detail: str) -> None:
        if len(detail) > MAX_DETAIL:
            detail = f"{detail[:MAX_DETAIL]}... [cut: {len(detail) - MAX_DETAIL} characters]"
        self.code = code
        self.expression = expression
        self.detail = detail
        super().__init__(f"{code}: {detail} in `{expression}`")


class BackendUnavailable(GatewayError):
    """The shared state backend (Valkey) could not be reached or answered an error."""


class UpstreamError(GatewayError):
    """An upstream MCP server could not be reached or failed while answering."""


class UpstreamIOError(UpstreamError, OSError):
    """The upstream connection failed or closed before the answer was complete."""


class UpstreamTimeout(UpstreamIOError, TimeoutError):
    """The answer's head did not come in time; the connection was dropped."""


class KeySetUnavailable(GatewayError):
    """The identity provider's metadata or key set could not be fetched or read."""


class ApprovalError(GatewayError):
    """An approval request is unknown, expired, already used or already decided."""


class ApprovalNotFound(ApprovalError):
    """No approval request has that id (answered 404, not as a conflict)."""
