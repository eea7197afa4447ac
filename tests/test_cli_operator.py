"""The operator's command line, run as real processes: what ``check`` imports, a closed pipe
and Ctrl-C, ``run`` (the demo stopped with it, a taken port said before any banner), ``try``
and the admin commands against real gateways, nothing, and something that is not celgate,
``admin-token``, and ``decide --config``."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, run_gateway, wait_healthy
from tests.peers import REPO_ROOT, PeerProcess, child_env, demo_server, free_port, start_process

FORBIDDEN = ("uvicorn", "valkey", "litestar", "mcp", "mcp_types")
AGENT_KEY = "cgk_operator-test-key"
ADMIN_TOKEN = "cga_operator-test-token"
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {"list_notes": {"action": "allow"}, "delete_note": {"action": "deny"}},
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def celgate(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in child_env().items() if not k.startswith("CELGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**base, **(env or {})},
        cwd=REPO_ROOT,
        timeout=60,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one line on stderr, and no traceback."""
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with one grant and an admin token, in front of the demo server."""
    folder = tmp_path_factory.mktemp("keyed")
    with (
        demo_server() as demo,
        run_gateway(
            folder,
            POLICY,
            {"demo": {"url": demo.url}},
            grants={"bot": {"key_sha256": sha(AGENT_KEY), "roles": ["analyst"]}},
            admin={"token_sha256": sha(ADMIN_TOKEN)},
        ) as gateway,
    ):
        yield gateway


class TestLazyCommands:
    """Offline commands import neither the web server, Valkey nor the MCP SDK."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["check", "rules/"],
            ["decide", "rules/demo.yaml", "--server", "demo", "--tool", "list_notes"],
            ["test", "rules/"],
            ["keys", "new", "--grant", "bot"],
            ["admin-token", "new"],
            ["--help"],
        ],
    )
    def test_no_server_modules_imported(self, argv: list[str]) -> None:
        code = (
            "import sys\n"
            "from gateway.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
            f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))\n"
            "print('IMPORTED', bad, file=sys.stderr)\n"
            "sys.exit(rc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, *argv],
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "IMPORTED []" in out.stderr


class TestTerminal:
    """A closed pipe and Ctrl-C end quietly."""

    def _closed_pipe(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        read, write = os.pipe()
        os.close(read)  # the reader (`head`) is gone before the first write
        try:
            return subprocess.run(
                [sys.executable, "-m", "gateway.cli", *args],
                stdout=write,
                stderr=subprocess.PIPE,
                env=child_env(),
                cwd=REPO_ROOT,
                timeout=60,
            )
        finally:
            os.close(write)

    def test_check_into_a_closed_pipe(self) -> None:
        out = self._closed_pipe("check", "rules/")
        assert out.stderr == b""
        assert out.returncode == 141

    def test_catalog_json_into_a_closed_pipe(self, keyed: GatewayProcess, tmp_path: Path) -> None:
        config = next(keyed.log_path.parent.glob("celgate.yaml"))
        out = self._closed_pipe("catalog", "--json", "--config", str(config))
        assert out.stderr == b""
        assert out.returncode == 141


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[tuple[PeerProcess, int]]:
    """Plain ``celgate run`` (the embedded demo) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "gateway.cli", "run", "--port", str(port)]
    proc = start_process(
        argv, port=None, url="", extra_env={"CELGATE_ADMIN_TOKEN": ADMIN_TOKEN},
        log_path=tmp_path / "run.log",
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        yield proc, port
    finally:
        proc.stop()


class TestRun:
    """``celgate run`` stops its demo server on SIGTERM and Ctrl-C; a taken port is one line
    before the banner and the admin token."""

    @pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
    def test_signal_stops_the_demo_server(
        self, demo_run: tuple[PeerProcess, int], sig: signal.Signals, code: int
    ) -> None:
        proc, _ = demo_run
        demo = _children(proc.pid)
        assert len(demo) == 1
        proc.proc.send_signal(sig)
        assert proc.proc.wait(timeout=20) == code
        assert _gone(demo[0])
        assert "Traceback" not in proc.output()

    def test_another_port_tells_the_admin_commands_where(
        self, demo_run: tuple[PeerProcess, int]
    ) -> None:
        """On another port than 8787 the admin commands, left to their default, reached
        another gateway there (its "refused the admin token") or none (red-team wave 41)."""
        proc, port = demo_run
        assert f"  admin CLI:    export CELGATE_URL=http://127.0.0.1:{port}\n" in proc.output()
        env = {"CELGATE_URL": f"http://127.0.0.1:{port}", "CELGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        listed = celgate("approvals", "list", env=env)
        assert listed.returncode == 0, listed.stderr

    def test_the_demo_server_answers_the_gateway_alone(
        self, demo_run: tuple[PeerProcess, int]
    ) -> None:
        """The demo server's loopback port took calls from any local process, with no key
        and no policy: a delete the demo's rules hold for approval ran (red-team wave 69).
        It answers only requests bearing the secret the gateway alone was given."""
        proc, port = demo_run
        (child,) = _children(proc.pid)
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        direct = f"http://127.0.0.1:{int(argv[argv.index(b'--port') + 1])}/mcp"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"accept": "application/json, text/event-stream"}
        assert httpx.post(direct, json=body, headers=headers, timeout=10).status_code == 401
        tried = celgate("try", f"http://127.0.0.1:{port}/mcp/demo")
        assert tried.returncode == 0, tried.stdout + tried.stderr

    def test_an_admin_token_set_empty_is_made_and_told(self, tmp_path: Path) -> None:
        """``CELGATE_ADMIN_TOKEN=`` (set, empty) made a token and never told it: the held
        delete of the README's tour could not be approved (red-team wave 69)."""
        port = free_port()
        argv = [sys.executable, "-m", "gateway.cli", "run", "--port", str(port)]
        proc = start_process(
            argv, port=None, url="", extra_env={"CELGATE_ADMIN_TOKEN": ""},
            log_path=tmp_path / "run.log",
        )  # fmt: skip
        try:
            wait_healthy(port, proc)
            assert "admin token for this run: export CELGATE_ADMIN_TOKEN=cga_" in proc.output()
        finally:
            proc.stop()

    def test_taken_port_is_said_before_any_banner(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            out = celgate("run", "--port", str(port))
        line = one_line_error(out)
        assert f"127.0.0.1:{port}" in line
        assert "in use" in line
        assert out.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("approve", "--url", "http://127.0.0.1:1", "--token", "t", "apr_abc"),
        ("deny", "--note", "why", "apr_abc", "--url", "http://127.0.0.1:1", "--token", "t"),
        ("--url", "http://127.0.0.1:1", "--token", "t", "approve", "apr_abc"),
    ],
)
def test_an_approval_id_is_read_wherever_the_options_are(args: tuple[str, ...]) -> None:
    """``approve --url U ID`` was refused ("unrecognized arguments: ID"): the command's own
    usage put the options first (red-team wave 63). Each form reaches for the gateway."""
    line = one_line_error(celgate("approvals", *args))
    assert line == "celgate: no gateway at http://127.0.0.1:1 (nothing answers there)"


def test_an_ipv6_listen_address_is_written_as_urls_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``listen: {host: "::1"}`` printed ``http://::1:8787``, a URL nothing parses, and
    ``celgate try`` on it died with a traceback (red-team wave 63). No socket is opened."""
    from gateway.cli.run import _banner
    from gateway.config import load_config

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "p.yaml").write_text('version: "1"\ndefault: deny\n')
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "anonymous: true\npolicy: rules/\nlisten: {host: '::1', port: 8799}\n"
        "servers:\n  demo: {url: 'http://127.0.0.1:1/mcp'}\n"
    )
    _banner(load_config(path, env={}))
    out = capsys.readouterr().out
    assert "celgate try http://[::1]:8799/mcp/demo" in out
    assert "export CELGATE_URL=http://[::1]:8799" in out
    line = one_line_error(celgate("try", "http://::1:8799/mcp/demo"))
    assert line.startswith("celgate: 'http://::1:8799/mcp/demo' is no URL")


class TestTry:
    """``celgate try``: one line for a missing key or no gateway; ``--key`` and CELGATE_KEY."""

    def test_no_key_on_a_gateway_with_grants(self, keyed: GatewayProcess) -> None:
        line = one_line_error(celgate("try", keyed.url("demo")))
        assert "needs an agent key" in line
        assert "--key" in line
        assert "CELGATE_KEY" in line

    def test_no_gateway(self) -> None:
        url = f"http://127.0.0.1:{free_port()}/mcp/demo"
        assert one_line_error(celgate("try", url)) == f"celgate: no gateway at {url} " + (
            "(nothing answers there)"
        )

    def test_wrong_key(self, keyed: GatewayProcess) -> None:
        line = one_line_error(celgate("try", keyed.url("demo"), "--key", "cgk_wrong"))
        assert "refused the agent key" in line

    def test_key_from_the_environment(self, keyed: GatewayProcess) -> None:
        out = celgate("try", keyed.url("demo"), env={"CELGATE_KEY": AGENT_KEY})
        assert out.returncode == 0, out.stderr
        assert "list_notes" in out.stdout
        assert "call delete_note" in out.stdout

    def test_on_the_aggregate_the_demo_is_called_by_its_names_there(
        self, keyed: GatewayProcess
    ) -> None:
        """On ``/mcp`` the demo's tools are ``demo__list_notes``...: ``try`` called
        ``list_notes``, and showed the upstream's "unknown tool" as a refusal."""
        out = celgate("try", keyed.base + "/mcp", env={"CELGATE_KEY": AGENT_KEY})
        assert out.returncode == 0, out.stderr
        assert "call demo__list_notes({}): ok" in out.stdout
        assert "call demo__delete_note" in out.stdout
        assert "\\n" not in out.stdout  # text shown as lines, not escaped

    def test_no_url_reaches_the_gateway_celgate_url_names(self, keyed: GatewayProcess) -> None:
        """``celgate run`` on another port prints ``export CELGATE_URL=...``: a bare ``try``
        reaches that gateway's ``/mcp`` (it tried the default port, where nothing was)."""
        env = {"CELGATE_KEY": AGENT_KEY, "CELGATE_URL": keyed.base + "/"}
        out = celgate("try", env=env)
        assert out.returncode == 0, out.stderr
        assert "call demo__list_notes({}): ok" in out.stdout


class TestAdminCommands:
    """Which gateway: --url, --config, CELGATE_URL; a clear line when it is not one."""

    def test_config_names_the_gateway(self, keyed: GatewayProcess) -> None:
        config = keyed.log_path.parent / "celgate.yaml"
        out = celgate(
            "approvals", "list", "--config", str(config), env={"CELGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "no pending approval requests"

    def test_celgate_url_names_the_gateway(self, keyed: GatewayProcess) -> None:
        env = {"CELGATE_ADMIN_TOKEN": ADMIN_TOKEN, "CELGATE_URL": keyed.base}
        out = celgate("limits", "show", env=env)
        assert out.returncode == 0, out.stderr

    def test_nothing_listening(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        out = celgate("approvals", "list", "--url", url, "--token", ADMIN_TOKEN)
        assert one_line_error(out) == f"celgate: no gateway at {url} (nothing answers there)"

    def test_not_a_celgate_gateway(self) -> None:
        with demo_server() as demo:
            url = demo.url.removesuffix("/mcp")
            out = celgate("approvals", "list", "--url", url, "--token", ADMIN_TOKEN)
        line = one_line_error(out)
        assert f"{url} is not a celgate gateway" in line
        assert "invalid admin token" not in line

    def test_an_mcp_endpoint_is_not_the_base_url(self, keyed: GatewayProcess) -> None:
        url = keyed.url("demo")
        line = one_line_error(celgate("approvals", "list", "--url", url, "--token", ADMIN_TOKEN))
        assert f"{url} is an MCP endpoint, not a gateway's base URL" in line
        assert "jsonrpc" not in line  # not the endpoint's answer as a dict

    def test_wrong_token(self, keyed: GatewayProcess) -> None:
        out = celgate("limits", "show", "--url", keyed.base, "--token", "cga_wrong")
        assert "refused the admin token" in one_line_error(out)

    def test_agent_key_is_not_an_admin_token(self, keyed: GatewayProcess) -> None:
        out = celgate("limits", "show", "--url", keyed.base, "--token", AGENT_KEY)
        assert "agent keys cannot use the admin API" in one_line_error(out)


class TestAdminToken:
    """``admin-token new`` prints a token and the line to paste; ``hash`` ignores one newline."""

    def test_new_token_matches_its_digest(self) -> None:
        out = celgate("admin-token", "new")
        assert out.returncode == 0
        token = out.stdout.splitlines()[0].rsplit(" ", 1)[1]
        digest = next(ln for ln in out.stdout.splitlines() if "token_sha256:" in ln)
        assert digest.split()[-1] == sha(token)

    def test_env_form(self) -> None:
        """The token is for the operators' shell, the hash for the gateway's .env: pasted
        whole into .env, the lines must not put the token there as a variable."""
        out = celgate("admin-token", "new", "--env")
        name, digest = out.stdout.strip().split("=", 1)  # `>> .env` appends this line alone
        token = out.stderr.split("export CELGATE_ADMIN_TOKEN=", 1)[1].split()[0]
        assert name == "CELGATE_ADMIN_TOKEN_SHA256" and digest == sha(token)

    def test_hash_of_echoed_token_drops_the_newline(self) -> None:
        out = celgate("admin-token", "hash", stdin="tok\n")
        assert out.stdout.strip() == f"token_sha256: {sha('tok')}"


_ROLE_POLICY = """\
version: "1"
default: deny
tools:
  report:
    rules:
      - {id: analysts, when: '"analyst" in agent.roles && agent.attrs.team == "finance"',
         action: allow}
      - {id: others, action: deny, reason: analysts only}
"""


class TestDecideWithConfig:
    """``decide --config --grant`` decides as the grant: its roles and attrs from the config."""

    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        (tmp_path / "policy.yaml").write_text(_ROLE_POLICY)
        grant = {"key_sha256": sha(AGENT_KEY), "roles": ["analyst"], "attrs": {"team": "finance"}}
        servers = {"demo": {"url": "http://127.0.0.1:9/mcp"}}
        text = json.dumps({"policy": "policy.yaml", "servers": servers, "grants": {"bot": grant}})
        path = tmp_path / "celgate.yaml"
        path.write_text(text)
        return path

    def test_grant_roles_from_config(self, config: Path) -> None:
        out = celgate("decide", "--config", str(config), "--grant", "bot", "--tool", "report")
        assert json.loads(out.stdout)["rule"].endswith("analysts"), out.stdout + out.stderr

    def test_flags_replace_the_grant_roles(self, config: Path) -> None:
        argv = ["decide", "--config", str(config), "--grant", "bot", "--tool", "report"]
        out = celgate(*argv, "--roles", "intern")
        assert json.loads(out.stdout)["effect"] == "deny"

    def test_unknown_grant(self, config: Path) -> None:
        argv = ["decide", "--config", str(config), "--grant", "nobody", "--tool", "report"]
        assert "no grant 'nobody'" in one_line_error(celgate(*argv))


def test_catalog_says_why_a_server_could_not_be_asked(tmp_path: Path) -> None:
    """A stdio command that is not installed printed 'redshift  -' and exit 2, the cause only
    as an exception's type in a log line."""
    (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\n')
    config = tmp_path / "celgate.yaml"
    servers = {"redshift": {"command": "celgate-test-no-such-command"}}
    config.write_text(json.dumps({"policy": "p.yaml", "anonymous": True, "servers": servers}))
    out = celgate("catalog", "--config", str(config))
    assert out.returncode == 2
    assert "cannot list the tools of redshift" in out.stderr
    assert "celgate-test-no-such-command" in out.stderr
