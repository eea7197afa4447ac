"""3 decide: rule files compiled to CEL, a pure ``decide``, and the policy test runner
(``tester``, behind ``celgate policy test``).

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
