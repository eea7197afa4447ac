"""Decision records and logging configuration (structlog), in one place.

One JSON line per decision, event ``policy.decision``. Arguments appear only as a sha256
digest of their canonical JSON unless ``audit.log_arguments`` is on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.policy.model import Call, Decision

log = structlog.get_logger("celgate")


def configure_logging(*, json_logs: bool | None = None, level: int = logging.INFO) -> None:
    """JSON lines when not on a TTY (or when asked); the console renderer otherwise."""
    as_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log every request at INFO; the decision record is the log.
    for noisy in ("httpx", "httpx2", "httpcore", "aiohttp.access", "uvicorn.access", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def args_digest(args: Mapping[str, Any]) -> str:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def new_decision_id() -> str:
    return uuid.uuid4().hex


class DecisionLog:
    """Writes decision records and keeps the most recent ones for the admin API."""

    def __init__(self, *, log_arguments: bool = False, keep: int = 500) -> None:
        self.log_arguments = log_arguments
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(
        self,
        decision_id: str,
        call: Call,
        decision: Decision,
        latency_ms: float,
        **extra: Any,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "decision_id": decision_id,
            "time": datetime.now(UTC).isoformat(),
            "grant": call.identity.grant,
            "agent": call.identity.agent,
            "session": call.session,
            "server": call.server,
            "tool": call.tool,
            "args_digest": args_digest(call.args),
            "effect": decision.effect,
            "rule": decision.rule,
            "reason": decision.reason,
            "revision": decision.revision,
            "latency_ms": round(latency_ms, 3),
        }
        if self.log_arguments:
            fields["args"] = dict(call.args)
        if decision.error:
            fields["error"] = decision.error
        if decision.expression:
            fields["expression"] = decision.expression
        state = decision.limit_state
        if state is not None:
            fields["limits"] = {
                "remaining": dict(state.remaining),
                "refused_by": state.refused_by,
                "retry_after": state.retry_after,
                "backend_error": state.backend_error,
                "failed_open": state.failed_open,
            }
        if decision.approval_id:
            fields["approval_id"] = decision.approval_id
        if decision.shadow:
            fields["shadow"] = [s.to_dict() for s in decision.shadow]
        fields.update(extra)
        self.recent.append(fields)
        log.info("policy.decision", **fields)
        return fields
