"""celgate as an OAuth 2.1 protected resource (issue 18, docs/oauth.md).

End to end: a real authorization server (oauth2-mock-server, npm) on loopback, the gateway as a
process, the SDK client discovering the server from the gateway's 401 and getting its own
token. Unit level: the token checks on an injected clock and an in-memory key set, and the
config's file:line errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from structlog.testing import capture_logs

from gateway.auth.agent import Agent
from gateway.auth.introspect import Introspector
from gateway.auth.settings import IntrospectionConfig, OAuthConfig
from gateway.auth.tokens import Refusal, TokenAuthority, Verified
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.authserver import AuthServer, auth_server, auth_server_ready, header_sink, oauth_gateway
from tests.gateway_proc import GatewayProcess, hidden_refusal, text_of

POLICY = """
version: "1"
default: deny
tools:
  echo:
    rules:
      - id: readers
        when: '"reader" in agent.roles'
        action: allow
      - id: blue-team
        when: 'has(agent.claims.team) && agent.claims.team == "blue"'
        action: allow
    action: deny
    reason: readers only
"""
CLIENTS = {
    "reader": {"roles": ["reader"], "scope": "mcp"},
    "guest": {"roles": [], "scope": "mcp"},
    "blue": {"team": "blue", "scope": "mcp"},
    "narrow": {"roles": ["reader"], "scope": "openid"},
}
OAUTH = {
    "scopes": ["mcp"],
    "claims": {"grant": "client_id", "agent": "sub", "roles": "roles", "attrs": {"team": "team"}},
}
KEY = "ops-static-key-0123456789abcdef"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-11-25",
}


@pytest.fixture(scope="module")
def ready() -> None:
    why = auth_server_ready()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[str, list[dict[str, str]]]]:
    with header_sink() as found:
        yield found


@pytest.fixture(scope="module")
def auth(ready: None) -> Iterator[AuthServer]:
    with auth_server(CLIENTS) as server:
        yield server


def _start(tmp: Path, auth: AuthServer, sink_url: str, **oauth: Any) -> Any:
    grants = {"ops": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "roles": ["reader"]}}
    settings = {**OAUTH, "issuer": auth.url, **oauth}
    return oauth_gateway(tmp, POLICY, {"up": {"url": sink_url}}, settings, grants=grants)


@pytest.fixture(scope="module")
def gw(
    auth: AuthServer, sink: tuple[str, list[dict[str, str]]], tmp_path_factory: Any
) -> Iterator[GatewayProcess]:
    with _start(tmp_path_factory.mktemp("oauth"), auth, sink[0]) as gateway:
        yield gateway


def call(url: str, token: str | None = None, text: str = "hi") -> httpx.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = {**CALL, "params": {"name": "echo", "arguments": {"text": text}}}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def challenge(resp: httpx.Response) -> dict[str, str]:
    """The auth-params of a ``Bearer`` challenge (our values hold no quotes or commas)."""
    value = resp.headers["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer"
    params = {}
    for part in rest.split(", "):
        name, _, quoted = part.partition("=")
        assert quoted.startswith('"') and quoted.endswith('"'), value
        params[name] = quoted[1:-1]
    return params


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestProtectedResourceMetadata:
    """RFC 9728 documents at the well-known path of each endpoint, field by field."""

    def test_each_server_endpoint_has_its_document(self, gw: GatewayProcess, auth: AuthServer):
        resp = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp/up")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        doc = resp.json()
        assert doc["resource"] == gw.url("up")  # section 3.3: the URL the client used
        assert doc["authorization_servers"] == [auth.url]
        assert doc["scopes_supported"] == ["mcp"]
        assert doc["bearer_methods_supported"] == ["header"]
        assert set(doc) <= {
            "resource",
            "authorization_servers",
            "scopes_supported",
            "bearer_methods_supported",
            "resource_name",
        }
        assert resp.headers["access-control-allow-origin"] == "*"

    def test_the_aggregate_and_the_gateway_have_theirs(self, gw: GatewayProcess) -> None:
        agg = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp").json()
        assert agg["resource"] == f"{gw.base}/mcp"
        root = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource").json()
        assert root["resource"] == gw.base

    def test_a_name_no_server_has_gets_a_document_alike(self, gw: GatewayProcess) -> None:
        """Without credentials, nobody can tell which server names exist: a name no server has
        reads as a server with no scopes of its own."""
        known = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp/up").json()
        resp = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp/nope")
        assert resp.status_code == 200
        doc = resp.json()
        assert doc["resource"] == gw.url("nope")
        assert {k: v for k, v in doc.items() if k not in ("resource", "resource_name")} == {
            k: v for k, v in known.items() if k not in ("resource", "resource_name")
        }

    def test_no_document_for_what_cannot_be_an_endpoint(self, gw: GatewayProcess) -> None:
        for rest in ("mcp/a/b", "mcp/-x", "other"):
            resp = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/{rest}")
            assert resp.status_code == 404, rest


class TestChallenges:
    """401 and 403 as RFC 6750 and the MCP authorization spec write them."""

    def test_no_credentials_points_to_the_metadata(self, gw: GatewayProcess) -> None:
        resp = call(gw.url("up"))
        assert resp.status_code == 401
        params = challenge(resp)
        meta = f"{gw.base}/.well-known/oauth-protected-resource/mcp/up"
        assert params == {"resource_metadata": meta, "scope": "mcp"}  # no error code: 3.1
        assert resp.json()["error"]["code"] == -32600

    def test_a_server_that_does_not_exist_is_challenged_alike(self, gw: GatewayProcess) -> None:
        """The 404 comes only after authentication: a caller without a credential, or with a
        bad one, cannot list the servers behind the gateway."""
        for token in (None, "not-a-token"):
            known, unknown = call(gw.url("up"), token), call(gw.url("nope"), token)
            assert known.status_code == unknown.status_code == 401
            assert known.json() == unknown.json()
            params = challenge(unknown)
            assert params["resource_metadata"].endswith("/oauth-protected-resource/mcp/nope")
            assert {k: v for k, v in params.items() if k != "resource_metadata"} == {
                k: v for k, v in challenge(known).items() if k != "resource_metadata"
            }

    def test_an_authenticated_caller_learns_the_server_does_not_exist(
        self, gw: GatewayProcess, auth: AuthServer
    ) -> None:
        resp = call(gw.url("nope"), auth.token("reader", resource=gw.base))
        assert resp.status_code == 404
        assert "no MCP server named" in resp.json()["error"]["message"]
        resp = call(gw.url("nope"), KEY)
        assert resp.status_code == 404

    def test_the_aggregate_challenges_alike(self, gw: GatewayProcess) -> None:
        resp = call(f"{gw.base}/mcp")
        assert resp.status_code == 401
        assert challenge(resp)["resource_metadata"].endswith("/oauth-protected-resource/mcp")

    def test_a_bad_token_is_invalid_token(self, gw: GatewayProcess) -> None:
        params = challenge(call(gw.url("up"), "not-a-token"))
        assert params["error"] == "invalid_token"
        assert params["resource_metadata"].endswith("/mcp/up")

    def test_a_missing_scope_is_403_insufficient_scope(
        self, gw: GatewayProcess, auth: AuthServer
    ) -> None:
        resp = call(gw.url("up"), auth.token("narrow", resource=gw.url("up")))
        assert resp.status_code == 403
        params = challenge(resp)
        assert params["error"] == "insufficient_scope"
        assert params["scope"] == "mcp"


class _Memory:
    """The SDK's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def sdk_client(url: str, issuer: str, client_id: str) -> Client:
    """The SDK client with client credentials: it reads the 401, the metadata and the issuer's
    metadata, and gets its token (with ``resource``, RFC 8707) on its own."""
    provider = ClientCredentialsOAuthProvider(
        url, _Memory(), client_id, "secret", scope="mcp", issuer=issuer
    )
    http = create_mcp_http_client(auth=provider)
    return Client(streamable_http_client(url, http_client=http), cache=None)


class TestTheSdkClientGetsItsOwnToken:
    async def test_a_reader_is_allowed_by_its_role_claim(
        self, gw: GatewayProcess, auth: AuthServer, sink: tuple[str, list[dict[str, str]]]
    ) -> None:
        async with sdk_client(gw.url("up"), auth.url, "reader") as client:
            result = await client.call_tool("echo", {"text": "hello"})
        assert not result.is_error and text_of(result) == "hello"
        [record] = gw.wait_records(1, where=lambda r: r["grant"] == "reader")
        assert record["auth"] == "token" and record["agent"] == "reader"
        assert record["effect"] == "allow" and record["rule"] == "readers"
        # Never forwarded: the upstream saw no credentials, and the log holds no token.
        assert sink[1] and all("authorization" not in h for h in sink[1])
        assert "eyJ" not in gw.log_path.read_text()

    async def test_a_guest_is_denied_without_it(self, gw: GatewayProcess, auth: AuthServer):
        async with sdk_client(gw.url("up"), auth.url, "guest") as client:
            result = await client.call_tool("echo", {"text": "hello"})
        assert "readers only" in hidden_refusal(gw, result)["reason"]

    async def test_cel_reads_the_claims(self, gw: GatewayProcess, auth: AuthServer) -> None:
        async with sdk_client(gw.url("up"), auth.url, "blue") as client:
            result = await client.call_tool("echo", {"text": "team"})
        assert not result.is_error
        [record] = gw.wait_records(1, where=lambda r: r["grant"] == "blue")
        assert record["rule"] == "blue-team"

    def test_static_keys_keep_working_beside_tokens(self, gw: GatewayProcess) -> None:
        resp = call(gw.url("up"), KEY, text="by key")
        assert resp.status_code == 200 and "by key" in resp.text
        [record] = gw.wait_records(1, where=lambda r: r["grant"] == "ops")
        assert record["auth"] == "key"


class TestTokensRefused:
    """Each minted by the real server (or forged from its public keys), each a 401."""

    def _refused(self, gw: GatewayProcess, token: str, url: str | None = None) -> str:
        resp = call(url or gw.url("up"), token)
        assert resp.status_code == 401, resp.text
        params = challenge(resp)
        assert params["error"] == "invalid_token"
        return params["error_description"]

    def test_expired(self, gw: GatewayProcess, auth: AuthServer) -> None:
        token = auth.token("reader", resource=gw.url("up"), ttl=-600)
        assert self._refused(gw, token) == "token expired"

    def test_minted_for_another_resource(self, gw: GatewayProcess, auth: AuthServer) -> None:
        token = auth.token("reader", resource="https://elsewhere.example/mcp")
        assert self._refused(gw, token) == "invalid aud claim"

    def test_minted_for_another_endpoint_of_this_gateway(
        self, gw: GatewayProcess, auth: AuthServer
    ) -> None:
        token = auth.token("reader", resource=gw.url("up"))
        assert call(gw.url("up"), token).status_code == 200
        refused = self._refused(gw, token, f"{gw.base}/mcp")
        assert refused == "token is for another resource"

    def test_wrong_issuer(self, gw: GatewayProcess, auth: AuthServer) -> None:
        token = auth.token("reader", resource=gw.url("up"), iss="http://127.0.0.1:9/")
        assert self._refused(gw, token) == "invalid iss claim"

    def test_alg_none(self, gw: GatewayProcess, auth: AuthServer) -> None:
        good = auth.token("reader", resource=gw.url("up"))
        payload = good.split(".")[1]
        token = f"{b64(json.dumps({'alg': 'none', 'kid': 'k1'}).encode())}.{payload}."
        assert self._refused(gw, token) == "signature algorithm not allowed"

    def test_hs256_signed_with_the_public_key(self, gw: GatewayProcess, auth: AuthServer):
        good = auth.token("reader", resource=gw.url("up"))
        [jwk] = auth.jwks()["keys"]
        public = RSAKey.import_key(jwk)
        for secret in (public.as_pem(private=False), json.dumps(jwk).encode()):
            header = b64(json.dumps({"alg": "HS256", "kid": jwk["kid"]}).encode())
            signing_input = f"{header}.{good.split('.')[1]}"
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            token = f"{signing_input}.{b64(mac)}"
            assert self._refused(gw, token) == "signature algorithm not allowed"


class TestKeyRotation:
    """Own server and gateway each: these tests change the key set and count its fetches."""

    def test_a_rotated_key_is_picked_up_and_the_old_one_dropped(
        self, ready: None, sink: tuple[str, list[dict[str, str]]], tmp_path: Path
    ) -> None:
        with auth_server(CLIENTS) as auth, _start(tmp_path, auth, sink[0]) as gw:
            old = auth.token("reader", resource=gw.url("up"))
            assert call(gw.url("up"), old).status_code == 200
            assert auth.rotate() == "k2"
            new = auth.token("reader", resource=gw.url("up"))
            assert call(gw.url("up"), new).status_code == 200
            assert auth.stats()["jwks"] == 2  # the unknown kid k2 refetched the set once
            # k1 left the set: its token is no longer good (and no fetch within the cooldown)
            assert call(gw.url("up"), old).status_code == 401
            assert auth.stats()["jwks"] == 2

    def test_an_unknown_kid_flood_refetches_once_per_cooldown(
        self, ready: None, sink: tuple[str, list[dict[str, str]]], tmp_path: Path
    ) -> None:
        attacker = RSAKey.generate_key(2048)
        with auth_server(CLIENTS) as auth, _start(tmp_path, auth, sink[0]) as gw:
            good = auth.token("reader", resource=gw.url("up"))
            assert call(gw.url("up"), good).status_code == 200
            claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
            for _ in range(40):
                header = {"alg": "RS256", "kid": secrets.token_hex(8)}
                forged = jwt.encode(header, claims, attacker)
                assert call(gw.url("up"), forged).status_code == 401
            assert auth.stats()["jwks"] <= 2  # the first load and at most one refetch
            assert call(gw.url("up"), good).status_code == 200
            limited = gw.records("oauth.jwks_refetch_limited")
            assert len(limited) >= 38


class TestIntrospection:
    def test_an_opaque_token_is_introspected_once(
        self, ready: None, sink: tuple[str, list[dict[str, str]]], tmp_path: Path
    ) -> None:
        with auth_server(CLIENTS) as auth:
            extra = {"introspection": {"client_id": "celgate", "client_secret": "s3cret"}}
            with _start(tmp_path, auth, sink[0], **extra) as gw:
                token = auth.opaque("reader", resource=gw.url("up"))
                assert call(gw.url("up"), token).status_code == 200
                assert call(gw.url("up"), token).status_code == 200
                records = gw.wait_records(2, where=lambda r: r["grant"] == "reader")
                assert {r["auth"] for r in records} == {"introspection"}
                assert call(gw.url("up"), "0" * 48).status_code == 401  # not active

    def test_what_anyone_can_make_the_issuer_do_is_bounded(
        self, ready: None, sink: tuple[str, list[dict[str, str]]], tmp_path: Path
    ) -> None:
        """A refused token is not asked about again for a while, and the same token sent many
        times at once is asked about once."""
        with auth_server(CLIENTS) as auth:
            extra = {"introspection": {"client_id": "celgate", "client_secret": "s3cret"}}
            with _start(tmp_path, auth, sink[0], **extra) as gw:
                before = auth.stats()["introspect"]
                for _ in range(20):
                    assert call(gw.url("up"), "1" * 48).status_code == 401
                assert auth.stats()["introspect"] == before + 1
                bogus = "2" * 48
                with ThreadPoolExecutor(16) as pool:
                    codes = list(
                        pool.map(lambda _: call(gw.url("up"), bogus).status_code, range(32))
                    )
                assert set(codes) == {401}
                assert auth.stats()["introspect"] <= before + 1 + 16  # one per wave at most
                good = auth.opaque("reader", resource=gw.url("up"))
                assert call(gw.url("up"), good).status_code == 200  # others unaffected

    def test_celgates_own_secrets_are_never_sent_to_the_issuer(
        self, ready: None, sink: tuple[str, list[dict[str, str]]], tmp_path: Path
    ) -> None:
        """A rotated-out agent key or the admin token presented as a bearer is refused here:
        the issuer's introspection endpoint never sees it."""
        with auth_server(CLIENTS) as auth:
            extra = {"introspection": {"client_id": "celgate", "client_secret": "s3cret"}}
            with _start(tmp_path, auth, sink[0], **extra) as gw:
                before = auth.stats()["introspect"]
                for secret in ("cgk_" + "k" * 43, "cga_" + "a" * 43):
                    assert call(gw.url("up"), secret).status_code == 401
                assert auth.stats()["introspect"] == before


# ----------------------------------------------------------------------------- unit level

ISSUER = "https://idp.example"
BASE = "https://gw.example"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIssuer:
    """Metadata and JWKS as an issuer would serve them; counts the JWKS fetches."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "a", "alg": "RS256"})]
        self.jwks_fetches = 0

    async def fetch(self, url: str) -> tuple[int, bytes]:
        if url.endswith("/.well-known/oauth-authorization-server"):
            doc = {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}
            return 200, json.dumps(doc).encode()
        if url == f"{ISSUER}/jwks":
            self.jwks_fetches += 1
            keys = [k.as_dict(private=False) for k in self.keys]
            return 200, json.dumps({"keys": keys}).encode()
        return 404, b""

    def sign(self, clock: Clock, key: int = 0, header_typ: str | None = None, **claims: Any) -> str:
        body = {
            "iss": ISSUER,
            "aud": f"{BASE}/mcp/up",
            "sub": "agent-1",
            "exp": int(clock.now) + 300,
            "scope": "mcp",
            **claims,
        }
        signer = self.keys[key]
        header = {"alg": "RS256", "kid": signer.kid}
        if header_typ is not None:
            header["typ"] = header_typ
        return jwt.encode(header, body, signer)


def authority(clock: Clock, issuer: FakeIssuer, **config: Any) -> TokenAuthority:
    settings = OAuthConfig(resource=BASE, issuer=ISSUER, scopes=("mcp",), **config)
    return TokenAuthority(settings, ["up"], issuer.fetch, clock)


def held_introspection() -> tuple[Any, asyncio.Event, list[str]]:
    """An authority whose issuer answers every introspection "not active", each held until
    ``release`` is set; the tokens asked about, in ``asked``."""
    from gateway.auth.introspect import Introspector
    from gateway.auth.settings import IntrospectionConfig

    clock, issuer = Clock(), FakeIssuer()
    auth = authority(clock, issuer)
    release = asyncio.Event()
    asked: list[str] = []

    async def post(url: str, form: dict[str, str], _: tuple[str, str]) -> tuple[int, bytes]:
        asked.append(form["token"])
        await release.wait()
        return 200, json.dumps({"active": False}).encode()

    config = IntrospectionConfig("gw", "secret", endpoint=f"{ISSUER}/introspect")
    auth.introspector = Introspector(config, auth, post)
    return auth, release, asked


class TestTokenChecksOnAClock:
    async def test_exp_and_nbf_with_leeway(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer, leeway=30)
        token = issuer.sign(clock, nbf=int(clock.now) + 20)
        assert isinstance(await auth.authenticate(token, "/mcp/up"), Agent)  # nbf within leeway
        clock.now += 300 + 29
        assert isinstance(await auth.authenticate(token, "/mcp/up"), Agent)
        clock.now += 2
        refused = await auth.authenticate(token, "/mcp/up")
        assert isinstance(refused, Refusal) and refused.description == "token expired"

    async def test_not_yet_valid(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer, leeway=5)
        refused = await auth.authenticate(issuer.sign(clock, nbf=int(clock.now) + 60), "/mcp/up")
        assert isinstance(refused, Refusal) and refused.status == 401

    async def test_a_kept_token_is_the_same_agent_and_costs_no_check(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer)
        token = issuer.sign(clock)
        first = await auth.authenticate(token, "/mcp/up")
        assert first is await auth.authenticate(token, "/mcp/up")
        assert isinstance(auth.verified[token], Verified)

    async def test_unknown_kid_refetch_waits_for_the_cooldown(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer, jwks_cooldown=30)
        assert isinstance(await auth.authenticate(issuer.sign(clock), "/mcp/up"), Agent)
        issuer.keys.append(RSAKey.generate_key(2048, parameters={"kid": "b", "alg": "RS256"}))
        fresh = issuer.sign(clock, key=1)
        assert isinstance(await auth.authenticate(fresh, "/mcp/up"), Agent)  # first refetch
        issuer.keys.append(RSAKey.generate_key(2048, parameters={"kid": "c", "alg": "RS256"}))
        third = issuer.sign(clock, key=2)
        assert isinstance(await auth.authenticate(third, "/mcp/up"), Refusal)  # limited
        assert issuer.jwks_fetches == 2
        clock.now += 31
        assert isinstance(await auth.authenticate(third, "/mcp/up"), Agent)
        assert issuer.jwks_fetches == 3

    async def test_callers_arriving_while_the_keys_load_wait_for_them(self) -> None:
        """16 honest callers at a fresh gateway: the second spent the cooldown on a fetch of
        its own and the other 14 were refused "unknown signing key" while the first fetch
        ran (red-team wave 42); the same after a rotation. They wait for the fetch under
        way: one fetch, every caller in."""
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer, jwks_cooldown=30)
        gate = asyncio.Event()
        fetch = issuer.fetch

        async def slow(url: str) -> tuple[int, bytes]:
            await gate.wait()  # the issuer takes its time: every caller arrives meanwhile
            return await fetch(url)

        auth.keys.fetch = slow
        for kid, subject in ((0, "first-load"), (1, "rotated")):
            if kid:
                issuer.keys.append(RSAKey.generate_key(2048, parameters={"kid": "b"}))
            tokens = [issuer.sign(clock, key=kid, sub=f"{subject}-{i}") for i in range(16)]
            gate.clear()
            calls = [asyncio.ensure_future(auth.authenticate(t, "/mcp/up")) for t in tokens]
            for _ in range(5):
                await asyncio.sleep(0)
            gate.set()
            outcomes = await asyncio.gather(*calls)
            assert all(isinstance(o, Agent) for o in outcomes), outcomes
        assert issuer.jwks_fetches == 2  # one for the first load, one for the new key

    async def test_a_key_swapped_under_the_same_kid_is_picked_up(self) -> None:
        """The issuer replaces key ``a`` by a new key also called ``a``: new tokens pass
        after one refetch, and those of the key withdrawn are refused from then on."""
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer, jwks_cooldown=30)
        old = issuer.sign(clock)
        assert isinstance(await auth.authenticate(old, "/mcp/up"), Agent)
        issuer.keys[0] = RSAKey.generate_key(2048, parameters={"kid": "a", "alg": "RS256"})
        fresh = issuer.sign(clock, sub="agent-2")
        assert isinstance(await auth.authenticate(fresh, "/mcp/up"), Agent)
        assert issuer.jwks_fetches == 2
        refused = await auth.authenticate(old, "/mcp/up")  # kept no longer: checked again
        assert isinstance(refused, Refusal) and refused.description == "bad signature"
        forged = issuer.sign(clock, sub="agent-3")[:-8] + "AAAAAAAA"
        for _ in range(20):  # forged signatures: no refetch within the cooldown
            assert isinstance(await auth.authenticate(forged, "/mcp/up"), Refusal)
        assert issuer.jwks_fetches == 2

    async def test_a_key_swapped_in_a_set_without_kids_is_picked_up(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        issuer.keys = [RSAKey.generate_key(2048, parameters={"alg": "RS256"})]
        auth = authority(clock, issuer)

        def unnamed(sub: str) -> str:
            body = {"iss": ISSUER, "aud": f"{BASE}/mcp/up", "sub": sub, "scope": "mcp"}
            body["exp"] = int(clock.now) + 300
            return jwt.encode({"alg": "RS256"}, body, issuer.keys[0])

        assert isinstance(await auth.authenticate(unnamed("one"), "/mcp/up"), Agent)
        issuer.keys = [RSAKey.generate_key(2048, parameters={"alg": "RS256"})]
        assert isinstance(await auth.authenticate(unnamed("two"), "/mcp/up"), Agent)

    async def test_a_flood_of_new_opaque_tokens_is_told_busy_not_queued(self) -> None:
        """8 questions at the issuer and 64 waiting: the next new token is answered at once
        (503, nothing kept), and is asked about normally once places are free."""
        from gateway.auth.introspect import BUSY, MAX_IN_FLIGHT, MAX_WAITING

        auth, release, asked = held_introspection()
        flood = [
            asyncio.ensure_future(auth.authenticate(f"junk-{i}", "/mcp/up"))
            for i in range(MAX_IN_FLIGHT + MAX_WAITING)
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        refused = await auth.authenticate("a-real-users-token", "/mcp/up")
        assert isinstance(refused, Refusal)
        assert (refused.status, refused.description) == (503, BUSY)
        release.set()
        await asyncio.gather(*flood)
        assert len(asked) == MAX_IN_FLIGHT + MAX_WAITING
        again = await auth.authenticate("a-real-users-token", "/mcp/up")
        assert isinstance(again, Refusal) and again.description == "token not active"

    async def test_callers_sharing_a_few_tokens_wait_in_bounded_numbers(self) -> None:
        """A thousand requests sharing a few made-up tokens made a few questions, but each
        request waited for its answer, and none of their connections gave way to honest
        clients (red-team wave 33): at most MAX_CALLERS wait; the next is told busy at once."""
        from gateway.auth.introspect import BUSY, MAX_CALLERS

        auth, release, asked = held_introspection()
        shared = [
            asyncio.ensure_future(auth.authenticate(f"junk-{i % 4}", "/mcp/up"))
            for i in range(MAX_CALLERS)
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(asked) == 4  # four questions for all of them
        refused = await auth.authenticate("junk-0", "/mcp/up")
        assert isinstance(refused, Refusal)
        assert (refused.status, refused.description) == (503, BUSY)
        release.set()
        answers = await asyncio.gather(*shared)
        assert all(isinstance(a, Refusal) and a.description == "token not active" for a in answers)
        assert auth.introspector is not None and auth.introspector.callers == 0

    async def test_a_symmetric_key_in_the_jwks_is_never_used(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        auth = authority(clock, issuer)
        await auth.keys.refresh()
        from gateway.auth.jwks import _usable

        assert not _usable({"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, ("RS256",))
        assert not _usable({"kty": "RSA", "use": "enc", "kid": "e"}, ("RS256",))

    async def test_claims_become_the_grant(self) -> None:
        clock, issuer = Clock(), FakeIssuer()
        from gateway.auth.settings import ClaimMap

        claims = ClaimMap(grant="azp", agent="sub", roles="realm_access.roles")
        auth = authority(clock, issuer, claims=claims)
        token = issuer.sign(clock, azp="bot", realm_access={"roles": ["reader", "ops"]})
        agent = await auth.authenticate(token, "/mcp/up")
        assert isinstance(agent, Agent)
        assert (agent.grant, agent.agent, agent.roles) == ("bot", "agent-1", ("reader", "ops"))
        assert agent.auth == "token" and agent.claims["azp"] == "bot"
        lacking = await auth.authenticate(issuer.sign(clock), "/mcp/up")
        assert isinstance(lacking, Refusal) and "azp" in lacking.description

    async def test_a_claim_cel_cannot_hold_is_left_out_not_a_deny_for_all(
        self, tmp_path: Path
    ) -> None:
        """An int past 64 bits in one claim no rule reads made every rule reading ``agent``
        fail (cel.bad_value: a deny for every call of the token)."""
        from datetime import UTC, datetime

        from gateway.auth.settings import ClaimMap
        from gateway.policy import Call, decide, load_policy

        clock, issuer = Clock(), FakeIssuer()
        mapping = ClaimMap(grant="azp", agent="sub", roles="roles", attrs={"account": "account"})
        auth = authority(clock, issuer, claims=mapping)
        big = 12345678901234567890
        token = issuer.sign(
            clock, azp="bot", roles=["reader"], account=big, nested={"n": [1, big]}, small=7
        )
        agent = await auth.authenticate(token, "/mcp/up")
        assert isinstance(agent, Agent)
        assert "account" not in agent.claims and "nested" not in agent.claims
        assert agent.claims["small"] == 7 and "account" not in agent.attrs
        path = tmp_path / "p.yaml"
        path.write_text(POLICY)
        now = datetime(2026, 11, 30, tzinfo=UTC)
        decision = decide(load_policy([path]), Call("echo", {}, "up", agent), now)
        assert decision.effect == "allow" and decision.rule == "readers"


class TestConfigErrors:
    """Each problem at its file:line, all reported together."""

    def _load(self, tmp_path: Path, oauth: str) -> str:
        (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\n')
        text = (
            "listen: {port: 8899}\npolicy: p.yaml\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            + oauth
        )
        path = tmp_path / "celgate.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        return str(info.value)

    def test_non_https_issuer_outside_loopback(self, tmp_path: Path) -> None:
        oauth = "oauth:\n  resource: https://gw.example\n  issuer: http://idp.example\n"
        assert "celgate.yaml:7" in self._load(tmp_path, oauth)
        assert "https outside loopback" in self._load(tmp_path, oauth)

    def test_resource_missing(self, tmp_path: Path) -> None:
        message = self._load(tmp_path, "oauth:\n  issuer: https://idp.example\n")
        assert "oauth.resource" in message and "aud" in message

    def test_a_claim_mapping_naming_nothing(self, tmp_path: Path) -> None:
        oauth = (
            "oauth:\n  resource: https://gw.example\n  issuer: https://idp.example\n"
            "  claims:\n    roles: ''\n    attrs: {team: 'a..b'}\n    rolez: x\n"
        )
        message = self._load(tmp_path, oauth)
        assert "celgate.yaml:9: oauth.claims.roles" in message
        assert "celgate.yaml:10: oauth.claims.attrs.team" in message
        assert "celgate.yaml:11: oauth.claims.rolez: unknown field" in message

    def test_symmetric_and_none_algorithms_are_refused(self, tmp_path: Path) -> None:
        oauth = (
            "oauth:\n  resource: https://gw.example\n  issuer: https://idp.example\n"
            "  algorithms: [RS256, HS256, none]\n  server_scopes: {nope: [x]}\n"
        )
        message = self._load(tmp_path, oauth)
        assert "celgate.yaml:8: oauth.algorithms: HS256, none refused" in message
        assert "celgate.yaml:9: oauth.server_scopes.nope: names no configured server" in message

    def test_loopback_http_is_allowed(self, tmp_path: Path) -> None:
        (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\n')
        path = tmp_path / "celgate.yaml"
        path.write_text(
            "policy: p.yaml\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            "oauth:\n  resource: http://127.0.0.1:8787\n  issuer: http://localhost:9000/\n"
        )
        config = load_config(path).oauth
        assert config is not None and config.issuer == "http://localhost:9000/"


class TestIntrospectionAnswersOnAClock:
    """An issuer's introspection endpoint, in memory: what its answers are taken for."""

    @staticmethod
    def introspecting(clock: Clock, answer: dict[str, Any], max_cache: float) -> Any:
        issuer = FakeIssuer()
        config = IntrospectionConfig("celgate", "s3cret", f"{ISSUER}/introspect", max_cache)
        auth = authority(clock, issuer, leeway=30, introspection=config)
        asked: list[str] = []

        async def post(url: str, form: dict[str, str], creds: tuple[str, str]) -> tuple[int, bytes]:
            asked.append(form["token"])
            return 200, json.dumps(answer).encode()

        auth.introspector = Introspector(config, auth, post)
        return auth, asked

    async def test_an_answer_is_kept_max_cache_seconds_not_plus_leeway(self) -> None:
        """``max_cache: 2`` with the default leeway kept a revoked token for 32 s."""
        clock = Clock()
        answer = {"active": True, "aud": f"{BASE}/mcp/up", "sub": "a", "scope": "mcp",
                  "exp": int(clock.now) + 3600, "iss": ISSUER}  # fmt: skip
        auth, asked = self.introspecting(clock, answer, max_cache=2)
        assert isinstance(await auth.authenticate("opaque-1", "/mcp/up"), Agent)
        clock.now += 1
        assert isinstance(await auth.authenticate("opaque-1", "/mcp/up"), Agent)
        assert len(asked) == 1  # kept
        answer["active"] = False  # revoked at the issuer
        clock.now += 1.5  # past max_cache, well within the leeway
        refused = await auth.authenticate("opaque-1", "/mcp/up")
        assert isinstance(refused, Refusal) and len(asked) == 2

    async def test_a_key_set_change_keeps_what_introspection_proved(self) -> None:
        """A forged token with a made-up ``kid`` loads the key set: that flushed every kept
        token, the introspected ones too (no key signed them), each asked of the issuer again
        (and refused as busy while the issuer was flooded)."""
        clock = Clock()
        answer = {"active": True, "aud": f"{BASE}/mcp/up", "sub": "a", "scope": "mcp",
                  "exp": int(clock.now) + 3600, "iss": ISSUER}  # fmt: skip
        auth, asked = self.introspecting(clock, answer, max_cache=600)
        assert isinstance(await auth.authenticate("opaque-1", "/mcp/up"), Agent)
        issuer = FakeIssuer()
        forged = issuer.sign(clock, key=0)  # signed by a key the gateway's issuer has not
        assert isinstance(await auth.authenticate(forged, "/mcp/up"), Refusal)
        assert auth.keys.generation > 0  # the key set was loaded
        assert isinstance(await auth.authenticate("opaque-1", "/mcp/up"), Agent)
        assert asked == ["opaque-1"]  # kept: not asked again

    @pytest.mark.parametrize(
        "kind", [{"token_use": "refresh_token"}, {"token_type": "refresh_token"}]
    )
    async def test_a_refresh_token_is_no_bearer_token(self, kind: dict[str, str]) -> None:
        """RFC 7662 answers for refresh tokens too (Ory Hydra says so in ``token_use``)."""
        clock = Clock()
        answer = {"active": True, "aud": f"{BASE}/mcp/up", "sub": "a", "scope": "mcp",
                  "exp": int(clock.now) + 3600, "iss": ISSUER, **kind}  # fmt: skip
        auth, _ = self.introspecting(clock, answer, max_cache=60)
        refused = await auth.authenticate("refresh-1", "/mcp/up")
        assert isinstance(refused, Refusal) and "refresh token" in refused.description


@pytest.mark.parametrize(
    ("typ", "claims", "said"),
    [
        (None, {"token_use": "refresh"}, "refresh token"),
        (None, {"token_type": "refresh_token"}, "refresh token"),
        (None, {"typ": "Refresh"}, "refresh token"),  # Keycloak's spelling
        (None, {"token_use": "id"}, "ID token"),
        # RFC 8693's URN, its kind last (wave 42: only the bare names were known)
        (None, {"token_type": "urn:ietf:params:oauth:token-type:id_token"}, "ID token"),
        ("refresh+jwt", {}, "typ header"),
        ("logout+jwt", {}, "typ header"),
    ],
)
async def test_a_signed_token_that_is_no_access_token_is_refused(
    typ: str | None, claims: dict[str, str], said: str
) -> None:
    """A JWT refresh token (or an ID token) signed by the issuer served as a bearer token for
    its whole life: the check was only on introspection answers."""
    clock, issuer = Clock(), FakeIssuer()
    auth = authority(clock, issuer)
    refused = await auth.authenticate(issuer.sign(clock, header_typ=typ, **claims), "/mcp/up")
    assert isinstance(refused, Refusal) and said in refused.description


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "application/at+jwt"])
async def test_an_access_token_by_any_of_its_types_is_taken(typ: str | None) -> None:
    clock, issuer = Clock(), FakeIssuer()
    token = issuer.sign(clock, header_typ=typ, token_type="Bearer")
    assert isinstance(await authority(clock, issuer).authenticate(token, "/mcp/up"), Agent)


@pytest.mark.parametrize("iss", [[ISSUER], ["https://evil.example", ISSUER], {"v": ISSUER}])
async def test_an_issuer_is_one_string(iss: Any) -> None:
    """The claims library takes a list holding the issuer as the issuer: a token whose
    ``iss`` names ours beside another was accepted (red-team wave 42). RFC 7519 makes it
    one string, compared as written."""
    clock, issuer = Clock(), FakeIssuer()
    refused = await authority(clock, issuer).authenticate(issuer.sign(clock, iss=iss), "/mcp/up")
    assert isinstance(refused, Refusal) and refused.description == "invalid iss claim"


async def test_an_audience_of_the_wrong_shape_is_refused_not_a_failure() -> None:
    """``aud: [endpoint, {"x": 1}]`` passed the library's check and then made every request
    with it a 500."""
    clock, issuer = Clock(), FakeIssuer()
    token = issuer.sign(clock, aud=[f"{BASE}/mcp/up", {"x": 1}])
    refused = await authority(clock, issuer).authenticate(token, "/mcp/up")
    assert isinstance(refused, Refusal) and "aud" in refused.description


async def test_a_good_token_shown_where_it_does_not_reach_is_logged() -> None:
    """Only tokens that failed to verify were logged: an agent probing other endpoints with
    its own token left no trace."""
    clock, issuer = Clock(), FakeIssuer()
    auth = authority(clock, issuer)
    with capture_logs() as logs:
        refused = await auth.authenticate(issuer.sign(clock), "/mcp")
    assert isinstance(refused, Refusal)
    assert [e["reason"] for e in logs if e["event"] == "oauth.refused"] == [refused.description]


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 10**400},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"exp": True},
        {"nbf": -(10**400)},
        {"nbf": float("nan")},
        {"nbf": float("-inf")},
    ],
)
async def test_a_time_claim_no_float_holds_is_refused(claims: dict[str, Any]) -> None:
    """An issuer-signed ``exp`` of 1 and 400 zeros answered 500 (the float overflowed),
    ``1e400`` (infinity) made a token that never expired, and a ``NaN`` ``nbf`` was never
    "not yet" (red-team wave 46): each is an invalid token."""
    clock, issuer = Clock(), FakeIssuer()
    refused = await authority(clock, issuer).authenticate(issuer.sign(clock, **claims), "/mcp/up")
    assert isinstance(refused, Refusal) and refused.status == 401
    assert refused.description in ("invalid exp claim", "invalid nbf claim", "token expired")


@pytest.mark.parametrize("nbf", [10**400, -(10**400), float("nan")])
async def test_an_introspected_time_no_float_holds_is_refused(nbf: Any) -> None:
    """The same numbers in an introspection answer made every call with the token a 500."""
    clock = Clock()
    answer = {"active": True, "aud": f"{BASE}/mcp/up", "sub": "a", "scope": "mcp",
              "exp": int(clock.now) + 3600, "iss": ISSUER, "nbf": nbf}  # fmt: skip
    auth, _ = TestIntrospectionAnswersOnAClock.introspecting(clock, answer, max_cache=60)
    refused = await auth.authenticate("opaque-1", "/mcp/up")
    assert isinstance(refused, Refusal) and refused.description == "invalid nbf claim"
