"""Tasks (2025-11-25's ``tasks/*``, and the task ids of the 2026-07-28 tasks extension) kept
apart per agent.

Every agent behind the gateway reaches an upstream as one client. A server keeps tasks per
client at best (a stateless one keeps one store for every caller), so through the gateway
any agent would see every other agent's tasks, and read any task's result by its id. So a
task id an upstream sends is bound to the server and the agent (``<id>.<mac>``, as session
and event ids are), wherever the protocol carries one; a request that names a task goes
upstream only with an id given to this caller, unwrapped. ``tasks/list`` is refused, and its
capability not shown: the upstream's list holds every agent's tasks, and the gateway cannot
tell whose each one is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.wire import jsonrpc as rpc
from gateway.wire.jsonrpc import BadMessage, Message, json_bytes

RELATED_TASK = "io.modelcontextprotocol/related-task"
#: Requests that name one task by ``taskId`` (``tasks/update`` answers a task's question);
#: any other request whose params carry a ``taskId`` (a method of ``relay.extra_methods``)
#: is taken the same way.
NAMED_TASK = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update"})
TASKS_LIST = "tasks/list"
LISTEN = "subscriptions/listen"
#: Task notifications: 2025-11-25's ``notifications/tasks/status``, and the tasks extension's
#: ``notifications/tasks`` (which may carry a finished task's result).
TASK_NOTIFICATIONS = "notifications/tasks"

Wrap = Callable[[str], str]


class ForeignTask(Exception):
    """An upstream's message speaks of a task this caller was never given (a server that
    keeps one store for every caller tags a log line, or a question, with another agent's
    task): bound for this caller, its id would read the other agent's task."""


def names_tasks(message: Message) -> bool:
    """Whether this request must have its task ids checked and unwrapped (or be refused)."""
    method = message.method
    if not message.is_request:
        return False
    if method in NAMED_TASK or method == TASKS_LIST or "taskId" in message.params:
        return True
    return method == LISTEN  # the tasks it follows: only this caller's, and only those named


def is_task_notification(method: Any) -> bool:
    return isinstance(method, str) and (
        method == TASK_NOTIFICATIONS or method.startswith(TASK_NOTIFICATIONS + "/")
    )


def task_of(message: Mapping[str, Any]) -> str | None:
    """The upstream's id of the task a task notification is about, if it says."""
    params = message.get("params")
    if not isinstance(params, Mapping):
        return None
    task = params.get("task")
    found = task.get("taskId") if isinstance(task, Mapping) else params.get("taskId")
    return found if isinstance(found, str) else None


def upstream_request(
    gw: Gateway, server: str, identity: Identity, message: Message
) -> tuple[bytes | None, str | None, frozenset[str]]:
    """The body to send upstream for a request ``names_tasks`` took (None: as it came), with
    the upstream's own task ids; the one task it names (for ``Mcp-Name``); and the upstream's
    ids of the tasks its answer may speak of: that one, or those a listen follows (none when
    it names none). Raises BadMessage for ``tasks/list`` and for an id not given to this
    caller."""
    params = message.params
    if message.method == TASKS_LIST:
        msg = "tasks/list is not served through celgate: read a task by the id its call returned"
        raise BadMessage(rpc.METHOD_NOT_FOUND, msg, status=200, msg_id=message.msg_id)

    def own(presented: Any) -> str:
        raw = None
        if isinstance(presented, str):
            raw = gw.signer.unwrap_task(server, identity.owner, presented)
        if raw is None:  # the same answer for a task of another agent and for no task at all
            raise BadMessage(rpc.INVALID_PARAMS, "task not found", 200, message.msg_id)
        return raw

    named = None
    if message.method != LISTEN:  # a request naming one task
        named = own(params.get("taskId"))
        followed = frozenset({named})
        changed = {**params, "taskId": named}
    else:
        wanted = params.get("notifications")
        ids = wanted.get("taskIds") if isinstance(wanted, Mapping) else None
        if ids is None:  # following no task of its own: told of none (the body goes as is)
            return None, None, frozenset()
        if not isinstance(ids, list):
            raise BadMessage(rpc.INVALID_PARAMS, "taskIds must be a list", 200, message.msg_id)
        raw = [own(i) for i in ids]
        followed = frozenset(raw)
        assert isinstance(wanted, Mapping)
        changed = {**params, "notifications": {**wanted, "taskIds": raw}}
    out = {**message.raw, "params": changed}
    return json_bytes(out, (",", ":")), named, followed


def bind_tasks(
    message: dict[str, Any], wrap: Wrap, created: Wrap | None = None
) -> dict[str, Any] | None:
    """An upstream's message with every task id it carries bound to the caller (and a
    ``tasks/list`` capability or answer taken out); None when it carries none. ``created``
    binds the id of a task an answer makes (its result is the task, or has it under
    ``task``); ``wrap`` every other id (it raises ``ForeignTask`` for one the caller may not
    hear of)."""
    out = None
    result = message.get("result")
    if isinstance(result, dict):
        bound = _bound_result(result, wrap, created or wrap)
        if bound is not None:
            out = {**message, "result": bound}
    params = message.get("params")
    if isinstance(params, dict):
        status = is_task_notification(message.get("method"))
        bound = _bound_part(params, wrap, own_id=status)
        task = params.get("task")
        if status and isinstance(task, dict):  # the extension's: the task under "task"
            inner = _with_id(task, wrap)
            if inner is not None:
                bound = {**(bound or params), "task": inner}
        if bound is not None:
            out = {**(out or message), "params": bound}
    return out


def _bound_result(result: dict[str, Any], wrap: Wrap, created: Wrap) -> dict[str, Any] | None:
    # A Task (tasks/get, tasks/cancel, a call's task) has its id at the top; a 2025-11-25
    # CreateTaskResult under "task". Those first: the _meta may name the task just made.
    own = _with_id(result, created) if "status" in result else None
    task = result.get("task")
    inner = _with_id(task, created) if isinstance(task, dict) else None
    out = _bound_part(own or result, wrap, own_id=False)
    out = out or own
    if inner is not None:
        out = {**(out or result), "task": inner}
    if isinstance(result.get("tasks"), list):  # a list of every agent's tasks: none shown
        out = {**(out or result), "tasks": []}
    caps = result.get("capabilities")
    if isinstance(caps, dict) and isinstance(caps.get("tasks"), dict) and "list" in caps["tasks"]:
        shown = {k: v for k, v in caps["tasks"].items() if k != "list"}
        out = {**(out or result), "capabilities": {**caps, "tasks": shown}}
    return out


def _bound_part(part: dict[str, Any], wrap: Wrap, *, own_id: bool) -> dict[str, Any] | None:
    """``part`` with its own ``taskId`` (when it is a task) and the related task in its
    ``_meta`` bound; None when neither is there."""
    out = _with_id(part, wrap) if own_id else None
    meta = part.get("_meta")
    if isinstance(meta, dict) and isinstance(meta.get(RELATED_TASK), dict):
        related = _with_id(meta[RELATED_TASK], wrap)
        if related is not None:
            out = {**(out or part), "_meta": {**meta, RELATED_TASK: related}}
    return out


def _with_id(obj: dict[str, Any], wrap: Wrap) -> dict[str, Any] | None:
    task_id = obj.get("taskId")
    if not isinstance(task_id, str):
        return None
    return {**obj, "taskId": wrap(task_id)}
