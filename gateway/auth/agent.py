"""The identity of an authenticated agent: the policy's Identity, plus how it was proven and,
for a token, its claims (what CEL reads as ``agent.claims``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.policy.model import Identity

AuthMethod = Literal["key", "token", "introspection", "anonymous"]


@dataclass(frozen=True, slots=True)
class Agent(Identity):
    """``auth`` goes in the decision record; the token itself never does."""

    auth: AuthMethod = "key"
    claims: Mapping[str, Any] = field(default_factory=dict)
