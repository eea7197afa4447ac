"""The servers a policy's entries name, checked against the servers a gateway serves.

An entry whose server part (``Demo/delete_note``, ``redshfit/*``) names no configured server
matches nothing, and whatever it says (a deny, an approval, a limit, a secret) silently does
nothing while a broader entry or the default decides. A name that differs from a configured
one only in case is a typo: refused. Another unknown name is told (a folder of rules may be
shared by gateways that serve different servers), with the closest configured name if any.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

from gateway.errors import ConfigError, Problem
from gateway.policy.matching import candidates
from gateway.policy.model import CompiledPolicy


def unknown_servers(
    policy: CompiledPolicy, servers: Collection[str]
) -> tuple[list[Problem], list[Problem]]:
    """``(refused, told)``: entries naming a configured server in another case, and entries
    naming a server the config does not have."""
    folded = {name.casefold(): name for name in servers}
    refused: list[Problem] = []
    told: list[Problem] = []
    for entry in policy.entries:
        server = entry.server
        if server is None or server in servers:
            continue
        same = folded.get(server.casefold())
        if same is not None:
            message = f"no server {server!r}; the config's is {same!r} (names match exactly)"
            refused.append(Problem(entry.where, entry.key, message))
            continue
        message = f"no server {server!r} in the config: this entry matches no call"
        close = difflib.get_close_matches(server, list(servers), n=1, cutoff=0.75)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        told.append(Problem(entry.where, entry.key, message))
    return refused, told


def idle_approvals(policy: CompiledPolicy) -> list[Problem]:
    """``approval:`` settings that hold nothing: on a rule whose action is not
    ``require_approval``, or on an entry none of whose actions is (``drop_table: {approval:
    {mode: wait}}`` reads as "held", and allows)."""
    told: list[Problem] = []
    for entry in policy.entries:
        for rule in entry.rules:
            if rule.approval is not None and rule.action != "require_approval":
                message = (
                    f"approval settings on a rule whose action is {rule.action}: no call waits"
                )
                told.append(Problem(rule.where, entry.key, message))
        holds = entry.action == "require_approval" or any(
            rule.action == "require_approval" for rule in entry.rules
        )
        if entry.approval is not None and not holds:
            message = "approval settings, but no require_approval here: no call waits" + (
                "" if entry.decides else ", and the entry decides nothing (the next does)"
            )
            told.append(Problem(entry.where, entry.key, message))
    return told


def describing_only(policy: CompiledPolicy) -> list[Problem]:
    """Entries naming one tool that only describe it (``risk``, ``kind``, ``secret_args``,
    ``approval``, ``reason``) while no other entry decides its calls: the policy default does,
    which an author who wrote ``purge: {risk: high}`` may not expect."""
    told: list[Problem] = []
    for entry in policy.entries:
        if entry.is_glob or entry.mode == "shadow" or not entry.describes_only:
            continue
        if any(other.decides for other in candidates(policy, entry.server, entry.pattern)):
            continue
        message = (
            "this entry only describes the tool (no action, rule or limit) and no other "
            f"entry decides it: the default ({policy.default}) does"
        )
        told.append(Problem(entry.where, entry.key, message))
    return told


def entry_warnings(policy: CompiledPolicy) -> list[Problem]:
    """What to tell of a policy's entries whatever servers it serves."""
    return idle_approvals(policy) + describing_only(policy)


def check_servers(policy: CompiledPolicy, servers: Collection[str]) -> list[Problem]:
    """What to tell of a policy's entries (unknown server names, approval settings that hold
    nothing); ``ConfigError`` for the names refused."""
    refused, told = unknown_servers(policy, servers)
    if refused:
        raise ConfigError(refused)
    return told + entry_warnings(policy)
