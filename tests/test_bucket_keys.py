"""Whose a stored bucket is, read back from its key: the admin API's per-grant view and reset
cover a grant's own buckets and its sessions' (``scope: session``), and nobody else's."""

from __future__ import annotations

import pytest

from gateway.policy.model import bucket_grant, key_part, session_value

GRANTS = ["alpha", "a/b", "a", "x|grant=beta", "p%2Fq", "g:x", "s:up/a/1"]


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("session", [None, "1", "s/1/x", "%2F"])
@pytest.mark.parametrize("agent", ["", "u1", "a/b", "x|grant=beta"])
def test_a_session_bucket_is_its_grants(grant: str, session: str | None, agent: str) -> None:
    key = f"c|session={key_part(session_value('up', grant, session, agent))}"
    assert bucket_grant(key) == grant


def test_sessionless_callers_of_one_grant_have_buckets_of_their_own() -> None:
    """Two users of one OAuth client (one grant, two agents), in the 2026-07-28 era: one
    bucket of the grant's let one user empty the other's (red-team wave 32)."""
    mallory, victim = (session_value("up", "app", None, agent) for agent in ("mallory", "v"))
    assert mallory != victim
    assert session_value("up", "app", None, "v") == victim  # one agent's calls: one bucket


def test_a_sessionless_bucket_stored_before_agents_is_still_its_grants() -> None:
    assert bucket_grant("c|session=g:alpha") == "alpha"


@pytest.mark.parametrize("grant", GRANTS)
def test_a_grant_bucket_is_its_grants(grant: str) -> None:
    assert bucket_grant(f"counter|with|bars|grant={key_part(grant)}") == grant


def test_a_grant_is_not_the_owner_of_a_longer_grants_sessions() -> None:
    key = f"c|session={key_part(session_value('up', 'a/b', '7'))}"
    assert bucket_grant(key) == "a/b" != "a"


@pytest.mark.parametrize("key", ["c|tool=up/x%7Cgrant%3Dbeta", "c|global=*", "c|session=zz", "c"])
def test_other_scopes_belong_to_no_grant(key: str) -> None:
    assert bucket_grant(key) is None


def test_a_session_bucket_is_its_agents_too() -> None:
    """An upstream may hand two clients one session id: two users of one OAuth client then
    drew from one bucket (red-team wave 35). The agent is escaped as the grant is, so no
    (agent, session) pair reads as another."""
    alice, bob = (session_value("up", "app", "shared-1", agent) for agent in ("alice", "bob"))
    assert alice != bob
    assert session_value("up", "app", "b/c", "a") != session_value("up", "app", "c", "a/b")
