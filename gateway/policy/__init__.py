"""The policy core: rule files compiled to CEL, and a pure ``decide``.

It imports nothing of the edge."""

from gateway.policy.decide import decide
from gateway.policy.loader import load_policy, rule_files
from gateway.policy.model import (
    ANONYMOUS,
    AppliedLimit,
    Call,
    CompiledPolicy,
    Decision,
    Effect,
    Identity,
    LimitState,
    ToolInfo,
)

__all__ = [
    "ANONYMOUS",
    "AppliedLimit",
    "Call",
    "CompiledPolicy",
    "Decision",
    "Effect",
    "Identity",
    "LimitState",
    "ToolInfo",
    "decide",
    "load_policy",
    "rule_files",
]
