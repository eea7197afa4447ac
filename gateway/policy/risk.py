"""Risk catalogue: every upstream tool gets a ``kind`` and a ``risk`` (the gateway on each tool
it lists, ``celgate decide`` and policy tests alike).

In order of authority: the operator's override in the policy (``risk:`` and ``kind:``, each
from the most specific enforced entry that sets it; a shadow entry only tries rules), the
tool's MCP annotations, then the verbs in its name (the riskiest one: ``find_and_delete`` is a
delete). A tool we know nothing about is ``execute``/``high``: unknown is never treated as
harmless.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy.matching import candidates
from gateway.policy.model import CompiledPolicy, ToolInfo

_VERBS: tuple[tuple[str, frozenset[str]], ...] = (
    ("read", frozenset({"list", "get", "describe", "search", "read", "show", "find", "fetch"})),
    (
        "write",
        frozenset(
            {
                "create", "update", "put", "set", "write", "add", "insert", "edit",
                "replace", "overwrite", "send", "publish", "grant", "revoke", "approve",
                "transfer", "pay", "rename", "upload", "assign", "mark",
            }
        ),
    ),
    (
        "delete",
        frozenset(
            {
                "delete", "drop", "remove", "terminate", "reset", "destroy", "purge",
                "wipe", "erase", "unlink", "truncate", "clear", "kill", "uninstall",
            }
        ),
    ),
    (
        "execute",
        frozenset(
            {
                "execute", "run", "invoke", "query", "exec", "call", "eval",
                "restart", "shutdown", "reboot", "stop", "cancel", "deploy", "trigger",
                "scale", "launch", "migrate",
            }
        ),
    ),
)  # fmt: skip
#: Words that join two actions in one name (``find_and_replace``): each part must name a
#: known verb, or the name is unknown (``fetch_and_merge`` read as a fetch, red-team wave 60).
_JOINERS = frozenset({"and", "then", "or"})
_RISK_OF_KIND = {"read": "low", "write": "medium", "delete": "high", "execute": "high"}
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


@dataclass(frozen=True, slots=True)
class Classified:
    kind: str
    risk: str
    why: str


#: The riskier of two verbs in one name wins: a name that reads and deletes is a delete.
_RANK = {"read": 0, "write": 1, "execute": 2, "delete": 3}


def _name_verb(name: str) -> str | None:
    """The riskiest kind any word of ``name`` names (a verb anywhere: ``repo_list`` reads),
    or None when no word is a known verb, or when a part of a joined name names none (each
    action of ``get_and_<anything>`` must be known: the unknown one may be the risky one)."""
    found: str | None = None
    part: str | None = None
    for word in [*_WORD.findall(name), "and"]:
        word = word.lower()
        if word in _JOINERS:
            if part is None:
                return None  # a part of the name that names no known action
            found = part if found is None or _RANK[part] > _RANK[found] else found
            part = None
            continue
        for kind, verbs in _VERBS:
            if word in verbs and (part is None or _RANK[kind] > _RANK[part]):
                part = kind
    return found


def from_annotations(annotations: Mapping[str, Any]) -> Classified | None:
    if annotations.get("destructiveHint") is True and annotations.get("readOnlyHint") is not True:
        return Classified("delete", "high", "annotation destructiveHint")
    if annotations.get("readOnlyHint") is True:
        risk = "medium" if annotations.get("openWorldHint") is True else "low"
        return Classified("read", risk, "annotation readOnlyHint")
    if annotations.get("destructiveHint") is False:
        idempotent = annotations.get("idempotentHint") is True
        return Classified(
            "write", "medium" if not idempotent else "low", "annotation destructiveHint=false"
        )
    return None


def classify(
    name: str,
    annotations: Mapping[str, Any] | None,
    override: tuple[str | None, str | None] = (None, None),
    by_name: bool = True,
) -> Classified:
    """Kind and risk of one tool, with the reason that decided them (``by_name``: whether its
    name's verbs may say, which a name its server never listed may not)."""
    kind_o, risk_o = override
    base = from_annotations(annotations or {})
    if base is None:
        verb = _name_verb(name) if by_name else None
        if verb is not None:
            base = Classified(verb, _RISK_OF_KIND[verb], f"name verb ({verb})")
        else:
            base = Classified("execute", "high", "unknown: no annotations, no known verb")
    if kind_o or risk_o:
        kind = kind_o or base.kind
        risk = risk_o or (_RISK_OF_KIND[kind] if kind_o else base.risk)
        return Classified(kind, risk, "policy override")
    return base


def override_for(policy: CompiledPolicy, server: str, tool: str) -> tuple[str | None, str | None]:
    """The ``kind:`` and the ``risk:`` the policy gives the tool, each from the most specific
    enforced entry that sets it (``"vault/*": {risk: high}`` keeps ``vault/read_secret:
    {kind: read}`` high). A shadow entry's are not taken: trying rules changes nothing."""
    kind: str | None = None
    risk: str | None = None
    for entry in candidates(policy, server, tool):  # most specific first
        if entry.mode == "shadow":
            continue
        kind = kind or entry.kind
        risk = risk or entry.risk
    return kind, risk


def tool_info(
    policy: CompiledPolicy,
    server: str,
    tool: Mapping[str, Any],
    risk: str | None = None,
    kind: str | None = None,
    listed: bool = True,
) -> ToolInfo:
    """What CEL sees as ``tool`` for one tool definition; ``risk`` and ``kind`` (a policy
    test's, ``celgate decide --risk``) replace what the classification gives. A tool its
    server has not listed (``listed`` False: made up, or added since the last reading) is
    ``execute``/``high`` unless the policy says otherwise: its name is a caller's word, and
    its annotations are not known yet."""
    name = str(tool.get("name", ""))
    annotations = tool.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    found = classify(name, annotations, override_for(policy, server, name), by_name=listed)
    return ToolInfo(
        risk=risk or found.risk, kind=kind or found.kind, annotations=annotations, listed=listed
    )
