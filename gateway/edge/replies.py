"""What the agent is told when the gateway answers a call itself, in the caller's protocol.

A denial is a tool result with ``isError: true``: the official SDK clients hand it to the
model, which can read the reason and act on it (a JSON-RPC error would surface as an
exception in the host instead). The decision for programs (effect, rule, reason, decision id,
counter, ``retry_after``, approval id) is in the result's ``_meta`` under ``DECISION_KEY``,
never in ``structuredContent``: clients check that against the tool's ``outputSchema``, even
on an error result, and would show a schema error instead of the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.errors import BackendUnavailable, UpstreamError, UpstreamTimeout
from gateway.policy.model import Decision
from gateway.wire import jsonrpc as rpc
from gateway.wire.jsonrpc import MODERN_VERSIONS, BadMessage, result_body

#: Where a result the gateway wrote carries its decision (``_meta`` keys are reverse-DNS).
DECISION_KEY = "io.celgate/decision"


def decision_payload(decision: Decision, decision_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "effect": decision.effect,
        "rule": decision.rule,
        "reason": decision.reason,
        # no policy revision: an unkeyed digest of the policy, it let an agent check guesses
        # of hidden tools' names and rule constants offline (red-team wave 40); the record
        # has it, by ``decision_id``
        "decision_id": decision_id,
    }
    if decision.error:
        out["error"] = decision.error
    if decision.approval_id:
        out["approval_id"] = decision.approval_id
    state = decision.limit_state
    if state is not None and state.refused_by is not None:
        out["counter"] = state.refused_by
        if state.retry_after is not None:
            out["retry_after"] = rounded_up(state.retry_after, 3)
    return out


def denial_text(decision: Decision) -> str:
    text = f"celgate refused this call: {decision.reason} (rule: {decision.rule})."
    state = decision.limit_state
    if state is not None and state.retry_after is not None:
        text += f" Retry after {rounded_up(state.retry_after, 1):.1f} s."
    return text


def rounded_up(seconds: float, places: int) -> float:
    """A wait told to a caller, never shorter than the true one: one that waits what it was
    told is not refused again ("Retry after 1.8 s." for 1.838 s was; "0.0 s." for 0.027 s)."""
    scale = 10.0**places
    if not math.isfinite(seconds * scale):  # a window of 1e308 s: "a very long time"
        return float(MAX_TOLD_SECONDS)
    return min(MAX_TOLD_SECONDS, max(1, math.ceil(round(seconds * scale, 6))) / scale)


#: The longest wait a caller is told (ten years): past it, a number no client can use.
MAX_TOLD_SECONDS = 315_360_000


def tool_result(
    msg_id: Any,
    text: str,
    structured: dict[str, Any],
    protocol_version: str | None,
    *,
    is_error: bool = True,
) -> bytes:
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": text}],
        "isError": is_error,
        "_meta": {DECISION_KEY: structured},
    }
    if protocol_version in MODERN_VERSIONS:
        result["resultType"] = "complete"
    return result_body(msg_id, result)


def denial(
    msg_id: Any, decision: Decision, decision_id: str, version: str | None, task: bool = False
) -> bytes:
    """The refusal of a call. A task-augmented call (``params.task``) gets a JSON-RPC error
    with the reason and the decision under ``data``: its client reads the answer as the
    task it asked to create, and a tool result would read as a broken server, reason lost."""
    payload = decision_payload(decision, decision_id)
    if task:
        data = {DECISION_KEY: payload}
        return rpc.error_body(msg_id, rpc.POLICY_REFUSED, denial_text(decision), data)
    return tool_result(msg_id, denial_text(decision), payload, version)


def is_task_call(params: Mapping[str, Any]) -> bool:
    """Whether a ``tools/call`` asks to run as a task (2025-11-25 task augmentation)."""
    return isinstance(params.get("task"), dict)


def input_required(
    msg_id: Any, asked: dict[str, Any], decision: Decision, decision_id: str
) -> bytes:
    """A 2026-07-28 ``input_required`` result: the gateway's own question (``inputRequests``,
    ``requestState``), with the held decision in ``_meta`` as on a denial."""
    result: dict[str, Any] = {
        "resultType": "input_required",
        **asked,
        "_meta": {DECISION_KEY: decision_payload(decision, decision_id)},
    }
    return result_body(msg_id, result)


def error_reply(exc: BaseException, msg_id: Any = None) -> tuple[int, bytes]:
    """The HTTP status and JSON-RPC error body that answer ``exc``: the one place a refusal or
    a gateway error becomes a JSON-RPC error. Only ``BadMessage`` shows its own message; an
    error of the tree says what kind of failure it was, and anything else is an internal
    error (logged in full by the caller, never shown)."""
    if isinstance(exc, BadMessage):
        return exc.status, rpc.error_body(exc.msg_id, exc.code, exc.message)
    if isinstance(exc, UpstreamTimeout):
        message = "upstream did not answer in time"
        status = rpc.upstream_failure_status(msg_id, 504)
        return status, rpc.error_body(msg_id, rpc.UPSTREAM_UNAVAILABLE, message)
    if isinstance(exc, UpstreamError):
        status = rpc.upstream_failure_status(msg_id, 502)
        return status, rpc.error_body(msg_id, rpc.UPSTREAM_UNAVAILABLE, "upstream is unavailable")
    if isinstance(exc, BackendUnavailable):
        return 503, rpc.error_body(msg_id, rpc.INTERNAL_ERROR, "backend unavailable")
    return 500, rpc.error_body(msg_id, rpc.INTERNAL_ERROR, "internal error")
