"""``limits show/reset --grant G`` reach the grant's key's agent's buckets (``scope: agent``):
the README's own example (a ``scope: agent`` counter, reset by grant) refilled nothing, and
``show`` said every bucket was full while the agent stayed limited."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.config import load_config
from gateway.policy.model import bucket_agent
from gateway.server.admin import _of_grant
from gateway.server.build import build_gateway
from tests.gateway_proc import write_config

ROWS = [
    ("queries|agent=analyst", 4.0),
    ("queries|agent=intern", 1.0),
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
        "queries|agent=analyst",
        "queries|grant=analyst-bot",
    ]
    assert [k for k, _ in _of_grant(gateway, ROWS, "intern-bot")] == ["queries|agent=intern"]
    assert _of_grant(gateway, ROWS, None) == ROWS


def test_bucket_agent() -> None:
    assert bucket_agent("c|agent=a%7Cb") == "a|b"
    assert bucket_agent("c|grant=a") is None
