"""The gateway config: every error with file:line, ``${VAR}`` from the environment, engines."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.auth.identity import hash_key
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy import Call, Identity, decide
from gateway.server.build import build_gateway

GOOD_KEY = hash_key("cgk_example")
ADMIN_KEY = hash_key("celgate-admin-example")


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "p.yaml").write_text(
        "default: deny\ntools:\n  echo:\n    rules:\n      - when: 'size(args.text) < 4'\n"
        "        action: allow\n"
    )
    path = tmp_path / "celgate.yaml"
    path.write_text(text if "grants:" in text else text + "anonymous: true\n")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env or {})
    return [str(p) for p in caught.value.problems]


class TestConfigErrors:
    def test_every_error_with_file_and_line(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "listen: {host: 127.0.0.1, port: 70000}\n"  # 1
            "policy: rules/\n"  # 2
            "servers:\n"  # 3
            "  up: {url: 'ftp://x'}\n"  # 4
            "  both: {url: 'http://127.0.0.1:1/mcp', command: x}\n"  # 5
            "  st: {command: python, colour: red}\n"  # 6
            "limits: {backend: 'valky://127.0.0.1:6379'}\n"  # 7
            "grants:\n"  # 8
            "  bot: {key_sha256: nothex}\n"  # 9
            "sessions: {secret: short}\n"  # 10
            "frobnicate: true\n",  # 11
        )
        found = problems(path)
        p = str(path)
        assert found == [
            f"{p}:1: listen.port: 70000 is not a TCP port",
            f"{p}:4: servers.up.url: must be an http:// or https:// URL",
            f"{p}:5: servers.both: give either `url` (Streamable HTTP) or `command` (stdio)",
            f"{p}:6: servers.st.colour: unknown field",
            f"{p}:7: limits.backend: unknown backend 'valky://127.0.0.1:6379' "
            "(use memory, valkey://host:port/db, valkeys:// for TLS or unix:///path)",
            f"{p}:9: grants.bot.key_sha256: must be 64 lowercase hex characters",
            f"{p}:10: sessions.secret: use at least 16 characters",
            f"{p}:11: frobnicate: unknown field",
        ]

    def test_rule_file_errors_are_told_with_the_configs(self, tmp_path: Path) -> None:
        """A rule file's errors waited until the config was clean: the operator mended one
        round, then learned of the next (red-team wave 37)."""
        path = write(
            tmp_path, "listen: {port: 70000}\npolicy: rules/\nservers: {up: {url: 'ftp://x'}}\n"
        )
        (tmp_path / "rules" / "p.yaml").write_text(
            "tools:\n  echo:\n    limits: [{counter: c, window: hour, max: 0}]\n"
        )
        found = problems(path)
        assert f"{path}:1: listen.port: 70000 is not a TCP port" in found
        assert any(f.startswith(f"{tmp_path / 'rules' / 'p.yaml'}:3") for f in found), found

    def test_busy_poll_is_gone_with_a_located_reason(self, tmp_path: Path) -> None:
        """The setting served the hand-written Valkey layer (removed): a file that still has it
        is refused at its line, saying why, not as a bare unknown field."""
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(tmp_path, base + "limits:\n  backend: memory\n  busy_poll_us: 300\n")
        assert problems(path) == [
            f"{path}:6: limits.busy_poll_us: no longer a setting: the Valkey client does not "
            "poll for replies (issue 19); delete this line"
        ]

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("http://127.0.0.1:70000/mcp", "is not a URL the gateway can reach"),
            ("http://127.0.0.1:80a/mcp", "is not a URL the gateway can reach"),
            ("http://[::1/mcp", "is not a URL the gateway can reach"),
            ("http:///mcp", "names no host"),
            ("https://:443/mcp", "names no host"),
            ("http://127.0.0.1:0/mcp", "port 0 is no port"),
            ("https://bot:s3cret@h.example/mcp", "must not hold credentials"),
        ],
    )
    def test_an_upstream_url_is_read_at_load(self, tmp_path: Path, url: str, problem: str) -> None:
        """Each ended celgate run with a traceback, or failed only when called."""
        path = write(tmp_path, f"policy: rules/\nservers:\n  up: {{url: '{url}'}}\n")
        [found] = problems(path)
        assert found.startswith(f"{path}:3: servers.up.url: ") and problem in found
        assert "s3cret" not in found

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("valkey://127.0.0.1:notaport/0", "Port could not be cast to integer value"),
            ("valkey://127.0.0.1:6379/zero", "the database must be a number"),
            ("valkeys://h:6380/0?ssl_cert_reqs=sometimes", "Certificate Requirements"),
            ("valkeys://h:6380/0?ssl_ca_certs=missing-ca.pem", "No such file"),
            ("http://user:hunter2@h/0", "unknown backend 'http://***@h/0'"),
            ("valkey://user:hunter2[x@h/0", "does not read as a URL"),
            ("valkeys://h:6380/0?ssl_ca_cert=ca.pem", "unknown option ssl_ca_cert"),
            ("valkey://h:6379/0?ssl_check_host_name=false", "unknown option ssl_check_host_name"),
        ],
    )
    def test_valkey_url_is_read_at_load(self, tmp_path: Path, url: str, problem: str) -> None:
        """A backend URL the limiter could not use fails at load, at its line, without the
        password; the ones it can use (TCP, TLS, a Unix socket) load."""
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(tmp_path, base + f"limits: {{backend: '{url}'}}\n")
        [found] = problems(path)
        assert found.startswith(f"{path}:4: limits.backend: ") and problem in found
        assert "hunter2" not in found

    def test_limits_timeout_and_key_prefix(self, tmp_path: Path) -> None:
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        config = load_config(write(tmp_path, base), env={})
        assert (config.limits.timeout_ms, config.limits.key_prefix) == (500, "celgate:")
        good = "limits: {timeout_ms: 250, key_prefix: 'staging:{cg}:'}\n"
        config = load_config(write(tmp_path, base + good), env={})
        assert (config.limits.timeout_ms, config.limits.key_prefix) == (250, "staging:{cg}:")
        for bad, problem in (
            ("timeout_ms: 0", "limits.timeout_ms: must be a whole number of milliseconds from 10"),
            ("timeout_ms: 1.5", "limits.timeout_ms: must be a whole number"),
            ("key_prefix: 'has space'", "limits.key_prefix: must be 1 to 64 letters"),
            ("key_prefix: 'glob*'", "limits.key_prefix: must be 1 to 64 letters"),
            ("key_prefix: 'prod:rl:'", "limits.key_prefix: must not hold rl:, ap: or cs:"),
            ("key_prefix: 'x.ap:'", "limits.key_prefix: must not hold rl:, ap: or cs:"),
            ("key_prefix: ''", "limits.key_prefix: must be 1 to 64 letters"),
            ("key_prefix: 7", "limits.key_prefix: must be 1 to 64 letters"),
        ):
            path = write(tmp_path, base + f"limits: {{{bad}}}\n")
            [found] = problems(path)
            assert found.startswith(f"{path}:4: {problem}"), found

    def test_usable_valkey_urls_load(self, tmp_path: Path) -> None:
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        for url in (
            "valkey://u:Kq7-zP2w-Tn9x@127.0.0.1:6379/3",
            "valkeys://127.0.0.1:6380/0?ssl_cert_reqs=none",
            "unix:///run/valkey.sock?db=2",
        ):
            path = write(tmp_path, base + f"limits: {{backend: '{url}'}}\n")
            assert load_config(path, env={}).limits.backend == url

    @pytest.mark.parametrize("secret", ["change-me-to-at-least-16-characters", "a" * 32])
    def test_a_placeholder_session_secret_is_refused(self, tmp_path: Path, secret: str) -> None:
        """deploy/example.env's value was taken: every session, event and task id's MAC
        was keyed by a published string."""
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(tmp_path, base + f"sessions: {{secret: '{secret}'}}\n")
        [found] = problems(path)
        assert found.startswith(f"{path}:4: sessions.secret: a placeholder")

    @pytest.mark.parametrize("password", ["change-me", "sekret", "aaaaaaaaaaaa"])
    def test_a_placeholder_valkey_password_is_refused(self, tmp_path: Path, password: str) -> None:
        """deploy/example.env's CELGATE_VALKEY_PASSWORD was taken as it was, unsaid: Valkey
        holds the approvals and the console's sign-ins."""
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        url = f"valkey://:{password}@127.0.0.1:6379/0"
        path = write(tmp_path, base + f"limits: {{backend: '{url}'}}\n")
        [found] = problems(path)
        assert found.startswith(f"{path}:4: limits.backend: the password is a placeholder")
        assert password not in found.replace("a placeholder", "")

    @pytest.mark.parametrize(
        "url",
        [
            "valkey://:Zq9S/ECRETpw@127.0.0.1:6379/0",  # base64's "/" cuts the authority short
            "valkey://:Zq9S#ECRETpw@127.0.0.1:6379/0",
            "valkey://:Zq9S?ECRETpw@127.0.0.1:6379/0",
            "valkey://Zq9SECRETpw@127.0.0.1:6379/zz",  # the password given as the user
            "redis://:Zq9SECRETpw@127.0.0.1:6379/0",
            "valkey:Zq9SECRETpw@127.0.0.1",
            "valkey://user:Zq9S/ECRETpw@127.0.0.1:6379/0",  # "Zq9S" read as the port
        ],
    )
    def test_a_backend_url_refused_never_shows_its_password(self, tmp_path: Path, url: str) -> None:
        """A URL the parser read as having no password (a raw "/", "#" or "?" in it, or no
        colon before it) was shown whole in the error, password and all, in `celgate check`
        and in the logs of `celgate run` (red-team wave 39)."""
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(tmp_path, base + f"limits: {{backend: '{url}'}}\n")
        [found] = problems(path)
        assert found.startswith(f"{path}:4: limits.backend:")
        assert "ECRET" not in found and "Zq9S" not in found and "127.0.0.1" in found, found

    def test_an_upstream_url_refused_never_shows_its_port_words(self, tmp_path: Path) -> None:
        """An upstream URL whose password held a "/" read as a port: the parser's words
        quoted it."""
        url = "http://user:Zq9SECRET/pw@127.0.0.1:1/mcp"
        path = write(tmp_path, f"policy: rules/\nservers:\n  up: {{url: '{url}'}}\n")
        [found] = problems(path)
        assert "servers.up.url" in found and "ECRET" not in found, found

    def test_a_placeholder_digest_is_refused(self, tmp_path: Path) -> None:
        """deploy/example.env's zeros were taken: a grant no key matches served, and with
        the admin token's zeros too the first error blamed the two for being alike."""
        zeros = "0" * 64
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(
            tmp_path,
            base
            + f"grants: {{bot: {{key_sha256: '{zeros}'}}}}\nadmin: {{token_sha256: '{zeros}'}}\n",
        )
        found = problems(path)
        assert [p.split(": ", 2)[1] for p in found] == [
            "grants.bot.key_sha256",
            "admin.token_sha256",
        ]
        assert all("a placeholder" in p for p in found)

    @pytest.mark.parametrize("secret", [b"", b"\n"])
    def test_the_digest_of_nothing_is_refused(self, tmp_path: Path, secret: bytes) -> None:
        """``printf %s "$TOKEN" | sha256sum`` with $TOKEN unset (or ``echo``'s newline)."""
        empty = hashlib.sha256(secret).hexdigest()
        base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
        path = write(tmp_path, base + f"grants: {{bot: {{key_sha256: '{empty}'}}}}\n")
        [found] = problems(path)
        assert "the digest of an empty secret" in found

    def test_trusted_proxies_are_addresses_or_networks(self, tmp_path: Path) -> None:
        base = (
            "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            f"grants: {{bot: {{key_sha256: '{GOOD_KEY}'}}}}\n"  # anonymous is never proxied
        )
        listen = "listen: {host: 127.0.0.1, port: 8787, trusted_proxies: [%s]}\n"
        path = write(tmp_path, base + listen % "'10.0.0.0/8', lb.example")
        assert problems(path) == [
            f"{path}:5: listen.trusted_proxies: 'lb.example' is not an IP address or network"
        ]
        path = write(tmp_path, base + listen % "'10.0.0.0/8', '127.0.0.1'")
        assert load_config(path, env={}).listen.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
        # uvicorn reads a network with host bits as no address: every caller was the proxy.
        path = write(tmp_path, base + listen % "'127.0.0.1/8', '::1'")
        assert problems(path) == [
            f"{path}:5: listen.trusted_proxies: '127.0.0.1/8' has host bits set: write "
            "127.0.0.0/8 or the address alone"
        ]

    def test_missing_environment_variable_is_an_error(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "policy: rules/\nservers:\n"
            "  up: {url: 'http://127.0.0.1:1/mcp', headers: {Authorization: 'Bearer ${TOKEN}'}}\n",
        )
        assert problems(path) == [f"{path}:3: environment variable TOKEN is not set"]
        config = load_config(path, env={"TOKEN": "s3cret"})
        assert config.servers["up"].headers == {"Authorization": "Bearer s3cret"}

    def test_a_value_whose_variable_is_not_set_is_that_problem_alone(self, tmp_path: Path) -> None:
        """Each unset variable was followed by "must be a non-empty string, not ''" and "must
        be an http:// or https:// URL": a variable that is not set is never an empty value."""
        path = write(tmp_path, "policy: rules/\nservers:\n  up: {url: '${UP_URL}'}\n")
        assert problems(path) == [f"{path}:3: environment variable UP_URL is not set"]

    def test_paths_are_relative_to_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n")
        config = load_config(path, env={})
        assert config.policy == (tmp_path / "rules",)

    def test_missing_policy_folder(self, tmp_path: Path) -> None:
        path = write(tmp_path, "policy: nope/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n")
        assert problems(path) == [f"{path}:1: policy: nope/: no such file or folder"]

    def test_grants_and_admin(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            f"grants:\n  bot: {{key_sha256: {GOOD_KEY}, roles: [a], attrs: {{team: x}}}}\n"
            f"admin: {{token_sha256: {ADMIN_KEY}}}\n",
        )
        config = load_config(path, env={})
        assert config.grants["bot"].roles == ("a",)
        assert config.grants["bot"].attrs == {"team": "x"}
        assert config.admin.token_sha256 == ADMIN_KEY


class TestEngineByConfig:
    def test_unknown_engine(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            "cel: {engine: fastest}\n",
        )
        assert problems(path) == [
            f"{path}:4: cel.engine: unknown value 'fastest' (use cel-python | cel-google)"
        ]

    @pytest.mark.parametrize("engine", ["cel-python", "cel-google"])
    def test_the_configured_engine_decides(self, tmp_path: Path, engine: str) -> None:
        if engine == "cel-google":
            pytest.importorskip("cel_expr_python")
        path = write(
            tmp_path,
            "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
            f"cel: {{engine: {engine}}}\n",
        )
        gateway = build_gateway(load_config(path, env={}))
        assert gateway.policy.engine.name == engine
        # size() counts code points on both engines: "héé" is 3, so it is allowed
        allowed = decide(gateway.policy, Call("echo", {"text": "héé"}, identity=Identity()))
        refused = decide(gateway.policy, Call("echo", {"text": "héééé"}, identity=Identity()))
        assert (allowed.effect, refused.effect) == ("allow", "deny")


class TestAnonymousAccess:
    def test_no_grants_needs_an_explicit_choice(self, tmp_path: Path) -> None:
        path = tmp_path / "celgate.yaml"
        (tmp_path / "p.yaml").write_text("default: deny\n")
        path.write_text("policy: p.yaml\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n")
        assert problems(path) == [
            f"{path}:1: grants: no grants: give agents keys (`celgate keys new`), "
            "or `anonymous: true` locally"
        ]

    @staticmethod
    def anonymous_behind(tmp_path: Path, listen: str) -> Path:
        """A config serving anonymous callers, listening as ``listen`` says."""
        path = tmp_path / "celgate.yaml"
        (tmp_path / "p.yaml").write_text("default: deny\n")
        path.write_text(
            f"listen: {listen}\npolicy: p.yaml\n"
            "servers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\nanonymous: true\n"
        )
        return path

    def test_anonymous_is_loopback_only(self, tmp_path: Path) -> None:
        path = self.anonymous_behind(tmp_path, "{host: 0.0.0.0, port: 8787}")
        assert problems(path) == [
            f"{path}:5: anonymous: anonymous access is for local use: listen on loopback, "
            "not 0.0.0.0"
        ]

    def test_anonymous_is_not_behind_a_proxy(self, tmp_path: Path) -> None:
        listen = "{host: 127.0.0.1, port: 8787, trusted_proxies: [127.0.0.1]}"
        path = self.anonymous_behind(tmp_path, listen)
        assert problems(path) == [
            f"{path}:5: anonymous: anonymous access is for local use: not behind a proxy "
            "(listen.trusted_proxies)"
        ]


def test_relay_method_lists(tmp_path: Path) -> None:
    """``relay.extra_methods`` (client requests) and ``relay.extra_server_methods`` (what a
    server may send its client beyond MCP's own) are read, and names that are none refused."""
    base = "policy: rules/\nservers:\n  up: {url: 'http://127.0.0.1:1/mcp'}\n"
    good = (
        "relay: {extra_methods: [vendor/ask, notifications/vendor/told],"
        " extra_server_methods: [notifications/v/x, v/y]}\n"
    )
    relay = load_config(write(tmp_path, base + good), env={}).relay
    assert relay.extra_methods == {"vendor/ask", "notifications/vendor/told"}
    assert relay.extra_server_methods == {"notifications/v/x", "v/y"}
    bad = "relay: {extra_server_methods: [' v/y', '', 'v/'], extra_methods: [notifications/]}\n"
    found = problems(write(tmp_path, base + bad))
    assert sum("relay.extra_server_methods:" in p for p in found) == 3
    assert sum("relay.extra_methods:" in p for p in found) == 1
