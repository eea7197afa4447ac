"""Handshake-era sessions on ``/mcp``: capped per grant (``aggregate.max_sessions_per_grant``)
with a clear error, and the memory 200 opened and closed sessions held is given back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.edge.agg.sessions import GIVE_WAY_SECONDS as GRACE
from gateway.edge.agg.sessions import Sessions
from gateway.policy import Identity
from gateway.wire.jsonrpc import BadMessage
from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.peers import PeerProcess, http_upstream
from tests.test_stdio_bridge import stdio_server

KEY = "cgk_aggregate-sessions-key"
OTHER = "cgk_aggregate-sessions-other"
CAP = 200
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = initialize_body("many")


@pytest.fixture(scope="module")
def web() -> Iterator[PeerProcess]:
    with http_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(web: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("aggs-gw")
    servers = {"web": {"url": web.url}, "st": stdio_server()}
    grants = {
        "bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()},
        "other": {"key_sha256": hashlib.sha256(OTHER.encode()).hexdigest()},
    }
    # (no give-way within the test: 200 sessions may take more than its 10 s under load)
    aggregate = {"max_sessions_per_grant": CAP, "max_sessions": 1000, "give_way": 3600}
    with run_gateway(
        directory, 'version: "1"\ndefault: allow\n', servers, grants=grants, aggregate=aggregate
    ) as gw:
        yield gw


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_session(http: httpx.Client, key: str) -> httpx.Response:
    return http.post("/mcp", json=INIT, headers={**HEADERS, "authorization": f"Bearer {key}"})


class TestSessions:
    def test_200_sessions_capped_per_grant_and_given_back(self, gateway: GatewayProcess) -> None:
        with httpx.Client(base_url=gateway.base, timeout=20) as http:
            warm = open_session(http, KEY)  # the first session's one-off costs (imports, caches)
            sid = warm.headers["mcp-session-id"]
            auth = {"authorization": f"Bearer {KEY}", "mcp-session-id": sid}
            assert http.delete("/mcp", headers=auth).status_code == 200
            before = rss_kib(gateway.peer.pid)
            sids = []
            for _ in range(CAP):
                opened = open_session(http, KEY)
                assert opened.status_code == 200, opened.text
                sids.append(opened.headers["mcp-session-id"])
            refused = open_session(http, KEY)
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert "grant 'bot' holds 200 sessions" in error["message"]
            assert "max_sessions_per_grant" in error["message"]
            assert open_session(http, OTHER).status_code == 200  # another grant is not held up
            for sid in sids:
                auth = {"authorization": f"Bearer {KEY}", "mcp-session-id": sid}
                assert http.delete("/mcp", headers=auth).status_code == 200
            after = rss_kib(gateway.peer.pid)
            assert open_session(http, KEY).status_code == 200  # room again once closed
        assert after - before <= 10 * 1024, (before, after)


def test_caps_are_checked_at_load(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    path = tmp_path / "celgate.yaml"
    path.write_text(
        "anonymous: true\npolicy: p.yaml\nservers:\n  a: {url: 'http://127.0.0.1:1/mcp'}\n"
        "  b: {url: 'http://127.0.0.1:2/mcp', prefix: a}\n"
        "aggregate:\n  max_sessions_per_grant: 0\n  max_sessions: many\n"
    )
    (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "celgate.yaml:5: servers.b.prefix: prefix 'a' is also servers.a's" in text
    assert "celgate.yaml:7: aggregate.max_sessions_per_grant" in text
    assert "celgate.yaml:8: aggregate.max_sessions: must be" in text


def test_one_user_of_a_grant_cannot_hold_the_places_of_the_others() -> None:
    """The users of one OAuth client share a grant: each has its own sessions' places."""
    sessions = Sessions(max_total=100, max_per_grant=2, idle_seconds=60)
    mallory, alice = Identity("ide", "mallory"), Identity("ide", "alice")
    held = [sessions.create("ide", {}, "2025-11-25", mallory.owner) for _ in range(2)]
    with pytest.raises(BadMessage) as refused:
        sessions.create("ide", {}, "2025-11-25", mallory.owner)
    assert refused.value.status == 429
    assert sessions.create("ide", {}, "2025-11-25", alice.owner).grant == "ide"
    sessions.drop(held[0].sid)  # a place given back is the owner's again
    sessions.create("ide", {}, "2025-11-25", mallory.owner)


def test_at_its_cap_an_agents_long_idle_session_gives_way() -> None:
    """The TypeScript SDK and the Inspector never send DELETE: their agent was refused every
    new /mcp session once it had opened its cap's worth within the idle timeout (red-team
    wave 39). Its own session idle GIVE_WAY_SECONDS, with nothing in flight and no stream,
    gives way; a busy one, a young one or another agent's never does."""
    sessions = Sessions(max_total=100, max_per_grant=3, idle_seconds=600)
    mallory, alice = Identity("ide", "mallory"), Identity("ide", "alice")
    other = sessions.create("ide", {}, "2025-11-25", alice.owner)
    held = [sessions.create("ide", {}, "2025-11-25", mallory.owner) for _ in range(3)]
    start = held[0].last_used
    assert sessions.stale_of(mallory.owner, start + GRACE / 2) is None  # all young
    held[0].streaming = True
    held[1].inflight["1"] = "up"
    held[2].last_used = start + GRACE * 5 / 6
    other.last_used = start - 500
    assert sessions.stale_of(mallory.owner, start + GRACE * 5 / 3) is None  # busy or young
    assert sessions.stale_of(mallory.owner, start + GRACE * 111 / 60) is held[2]
    assert sessions.stale_of(alice.owner, start + 1000) is None  # alice is under her cap


def test_a_session_is_idle_from_the_end_of_its_last_request() -> None:
    """From its start, a session whose call waited minutes for approval was closed by the
    idle sweep, or gave way at its agent's cap, right after its answer (red-team wave 40)."""
    sessions = Sessions(max_total=10, max_per_grant=1, idle_seconds=40)
    session = sessions.create("g", {}, "2025-11-25", "g")
    start = session.last_used
    with session.using():  # a call held for approval, minutes long
        assert sessions.idle(start + 600) == []
        assert sessions.stale_of("g", start + 600) is None
    ended = session.last_used
    assert sessions.idle(ended + 39) == [] and sessions.stale_of("g", ended + GRACE / 2) is None
    assert sessions.idle(ended + 41) == [session]


def test_a_clients_progress_on_a_servers_request_is_that_servers_alone() -> None:
    """A client's ``notifications/progress`` on a server's request (its progress token) went
    to every server of the ``/mcp`` session (red-team wave 62): it goes to the server whose
    request named the token, and to none when two servers' requests named the same one, or
    once that request is answered."""
    sessions = Sessions(max_total=10, max_per_grant=10, idle_seconds=60)
    session = sessions.create("g", {}, "2025-11-25", "g/a")
    ours = session.outward_upcall("a", 0, "tok-a")
    session.outward_upcall("b", 0, "tok-b")
    assert ours != session.outward_upcall("b", 1)  # each server's id 0 is its own
    assert (session.progress_of("tok-a"), session.progress_of("tok-b")) == ("a", "b")
    assert session.progress_of("tok-c") is None and session.progress_of(True) is None
    session.outward_upcall("b", 2, "tok-a")  # b names a's token too: whose it is, unknown
    assert session.progress_of("tok-a") is None
    assert session.answered(session.known_upcall("b", 0)) == ("b", 0)
    assert session.progress_of("tok-b") is None  # answered: its progress is over
    for i in range(300):  # the oldest pushed out take their tokens with them
        session.outward_upcall("a", 100 + i, 1000 + i)
    assert session.progress_of(1000) is None and session.progress_of(1299) == "a"
    assert len(session.upcall_tokens) <= 256


def test_a_lost_links_requests_die_with_it() -> None:
    """A server that restarted asks its new link's first question under the id its old
    link's had: it took the old question's id here, and the client's answer to the old
    question (a consent) went to the new one (red-team wave 67). A relink forgets the lost
    link's requests: an answer to one is refused, and the new question has an id of its own."""
    sessions = Sessions(max_total=10, max_per_grant=10, idle_seconds=60)
    session = sessions.create("g", {}, "2025-11-25", "g/a")
    old = session.outward_upcall("a", 0, "tok")
    other = session.outward_upcall("b", 0)
    session.forget_upcalls("a")
    new = session.outward_upcall("a", 0)
    assert new != old and session.answered(old) is None
    assert session.progress_of("tok") is None
    assert session.answered(other) == ("b", 0)  # another server's are its own
    assert session.answered(new) == ("a", 0)


def test_an_id_in_progress_is_no_new_requests() -> None:
    """Two requests of a ``/mcp`` session under one id (1 or "1": a server's streams are by
    the id's text): the server's answer to the first went to the second (red-team wave 68).
    The second is refused while the first is in progress."""
    from gateway.wire.jsonrpc import BadMessage

    sessions = Sessions(max_total=10, max_per_grant=10, idle_seconds=60)
    session = sessions.create("g", {}, "2025-11-25", "g/a")
    done = session.track(1, "a")
    for again in (1, "1"):
        with pytest.raises(BadMessage) as refused:
            session.track(again, "b")
        assert "in progress" in refused.value.message
    done()
    session.track("1", "b")()  # once it is over, the id is free (cancels aside)
