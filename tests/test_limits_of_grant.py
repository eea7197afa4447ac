"""``limits show/reset --grant G`` reach the grant's agents' buckets (``scope: agent``): the
README's own example (a ``scope: agent`` counter, reset by grant) refilled nothing, and
``show`` said every bucket was full while the agent stayed limited. An agent's bucket is the
agent's within its grant: a key's agent and an OAuth user named alike (or an agent of
another grant) drew from one bucket, and one could empty the other's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.policy import Call, Identity
from gateway.policy.decide import decide
from gateway.policy.loader import load_policy
from gateway.policy.model import agent_value, bucket_grant, key_part
from gateway.server.admin import _of_grant
from gateway.server.build import build_gateway
from tests.gateway_proc import write_config

ROWS = [
    ("queries|agent=analyst-bot/analyst", 4.0),
    ("queries|agent=intern-bot/intern", 1.0),
    ("queries|grant=analyst-bot", 2.0),
    ("queries|global=*", 9.0),
]


def test_a_grants_buckets_include_its_agents(tmp_path: Path) -> None:
    grants = {
        "analyst-bot": {"key_sha256": hashlib.sha256(b"k1").hexdigest(), "agent": "analyst"},
        "intern-bot": {"key_sha256": hashlib.sha256(b"k2").hexdigest(), "agent": "intern"},
    }
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    config = write_config(tmp_path, "default: deny\n", servers, 9, grants=grants)
    gateway = build_gateway(load_config(config))
    assert [k for k, _ in _of_grant(gateway, ROWS, "analyst-bot")] == [
        "queries|agent=analyst-bot/analyst",
        "queries|grant=analyst-bot",
    ]
    assert [k for k, _ in _of_grant(gateway, ROWS, "intern-bot")] == [
        "queries|agent=intern-bot/intern"
    ]
    assert _of_grant(gateway, ROWS, None) == ROWS


@pytest.mark.parametrize("grant", ["alice", "https://idp/client", "a%b|c=d/e"])
def test_an_agent_bucket_is_its_grants(grant: str) -> None:
    assert bucket_grant("q|agent=" + key_part(agent_value(grant, "al/ice"))) == grant
    assert bucket_grant("q|agent=noslash") is None


def test_one_agent_name_in_two_grants_is_two_buckets(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    limit = "{counter: q, window: minute, max: 5, scope: agent}"
    path.write_text(f"default: deny\ntools:\n  t:\n    limits: [{limit}]\n")
    policy = load_policy([path])
    keys = {
        decide(policy, Call(tool="t", identity=Identity(grant=grant, agent="alice"))).limits[0].key
        for grant in ("alice", "https://idp/client", "alice/x")
    }
    assert keys == {
        "q|agent=alice/alice",
        "q|agent=https:%252F%252Fidp%252Fclient/alice",
        "q|agent=alice%252Fx/alice",
    }
