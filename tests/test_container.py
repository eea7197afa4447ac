"""The container, tested without Docker: the Dockerfile and compose file say what the issue
asks (multi-stage slim build, the wheel installed, a non-root user, the entry command, a
health check on ``/healthz``, the config mounted at ``/etc/celgate``), the mounted config loads,
and the wheel, installed into a fresh virtual environment, serves that config with the
container's exact entry command."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import site
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from tests.gateway_proc import client, wait_healthy
from tests.peers import REPO_ROOT, PeerProcess, free_port, start_demo_server, start_process
from tests.valkey_server import running_valkey

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "compose.yaml"
DEPLOY = REPO_ROOT / "deploy"
ENTRY = ["celgate", "run", "--config", "/etc/celgate/config.yaml"]
KEY = "cgk_container-test-key"
ADMIN_TOKEN = "cga_container-test-admin-token"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def deploy_env(**values: str) -> dict[str, str]:
    return {
        "CELGATE_DEMO_URL": "http://127.0.0.1:9/mcp",
        "CELGATE_LIMITS_BACKEND": "memory",
        "CELGATE_AGENT_KEY_SHA256": hashlib.sha256(KEY.encode()).hexdigest(),
        "CELGATE_ADMIN_TOKEN_SHA256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        "CELGATE_SESSION_SECRET": "container-test-session-secret-0123456789",
        **values,
    }


class TestDockerfile:
    """Multi-stage, slim, wheel-installed, non-root, with the entry command and health check."""

    def test_two_stages_on_slim_python(self) -> None:
        bases = [args for word, args in instructions() if word == "FROM"]
        assert len(bases) >= 2
        assert all(re.match(r"python:3\.\d+-slim\b", b) for b in bases)

    def test_final_stage_installs_the_wheel_from_the_build_stage(self) -> None:
        final = instructions()[[w for w, _ in instructions()].index("FROM", 1) :]
        copies = [a for w, a in final if w == "COPY"]
        assert any("--from=build" in c and ".whl" in c for c in copies)
        assert any("pip install" in a and ".whl" in a for w, a in final if w == "RUN")

    def test_runs_as_a_non_root_user(self) -> None:
        users = [a for w, a in instructions() if w == "USER"]
        assert users
        assert users[-1].split(":")[0] not in ("root", "0")

    def test_entry_point_is_celgate_run_with_the_mounted_config(self) -> None:
        entry = [a for w, a in instructions() if w == "ENTRYPOINT"]
        assert json.loads(entry[-1]) == ENTRY

    def test_healthcheck_probes_healthz_on_the_exposed_port(self) -> None:
        health = next(a for w, a in instructions() if w == "HEALTHCHECK")
        exposed = next(a for w, a in instructions() if w == "EXPOSE")
        assert f"127.0.0.1:{exposed}/healthz" in health
        assert load_config_from_deploy().listen.port == int(exposed)


def load_config_from_deploy() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in deploy_env().items():
            mp.setenv(name, value)
        return load_config(DEPLOY / "config.yaml")


class TestCompose:
    """celgate and Valkey, the deploy folder mounted, every config variable provided."""

    def test_services(self) -> None:
        assert {"celgate", "valkey"} <= set(compose()["services"])

    def test_celgate_mounts_deploy_at_etc_celgate_and_publishes_the_port(self) -> None:
        svc = compose()["services"]["celgate"]
        assert "./deploy:/etc/celgate:ro" in svc["volumes"]
        assert any(p.endswith(f":{load_config_from_deploy().listen.port}") for p in svc["ports"])

    def test_limits_go_to_the_valkey_service(self) -> None:
        svc = compose()["services"]["celgate"]
        backend = svc["environment"]["CELGATE_LIMITS_BACKEND"]
        assert backend.startswith("valkey://:${CELGATE_VALKEY_PASSWORD:?")
        assert backend.endswith("}@valkey:6379/0")
        assert svc["depends_on"]["valkey"]["condition"] == "service_healthy"

    def test_valkey_takes_a_password_and_only_celgate_reaches_it(self) -> None:
        """Valkey holds the console's sessions: any container that reached it unauthenticated
        could write one, and approve held calls with no admin token."""
        services = compose()["services"]
        command = services["valkey"]["command"]
        assert command[command.index("--requirepass") + 1].startswith("${CELGATE_VALKEY_PASSWORD:?")
        on_state = {name for name, svc in services.items() if "state" in svc.get("networks", [])}
        assert on_state == {"celgate", "valkey"}
        assert services["valkey"]["networks"] == ["state"]

    def test_every_variable_of_the_config_is_set_by_compose(self) -> None:
        used = set(re.findall(r"\$\{(\w+)\}", (DEPLOY / "config.yaml").read_text()))
        assert used <= set(compose()["services"]["celgate"]["environment"])


class TestDeployConfig:
    """The mounted config: all interfaces, grants required, hosts guarded, the rules load."""

    def test_loads_and_is_not_anonymous(self) -> None:
        config = load_config_from_deploy()
        assert config.listen.host == "0.0.0.0"
        assert config.grants
        assert config.security.allowed_hosts
        assert "demo" in config.servers

    def test_admin_token_from_the_environment_and_metrics_private(self) -> None:
        config = load_config_from_deploy()
        assert config.admin.token_sha256 == deploy_env()["CELGATE_ADMIN_TOKEN_SHA256"]
        assert not config.admin.metrics_public

    def test_example_env_sets_every_variable_compose_requires(self) -> None:
        example = (DEPLOY / "example.env").read_text()
        names = set(re.findall(r"(?m)^(\w+)=", example))
        required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
        assert required <= names


# ----------------------------------------------------------------- the wheel, installed


def _build_wheel(out: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO_ROOT)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.insert(4, "--no-build-isolation")
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and importlib.util.find_spec("hatchling") is None:
        # pip fetches the build backend (hatchling) into an isolated environment: offline,
        # with no hatchling here either, there is nothing to build the wheel with.
        pytest.skip(f"cannot build the wheel (no hatchling, index unreachable?): {built.stderr}")
    assert built.returncode == 0, built.stderr
    return next(out.glob("celgate-*.whl"))


def _dependency_dirs() -> list[str]:
    """Where this interpreter finds celgate's dependencies: its site-packages, in order."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def venv_env(venv: Path) -> dict[str, str]:
    """The environment of a process of the venv: nothing of the checkout on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed, and the dependencies
    of the environment running the tests behind it.

    The dependencies are made visible by a ``.pth`` file listing this environment's
    site-packages directories, which Python appends after the venv's own: the wheel's
    ``gateway`` comes first, and the ``.pth`` files inside those directories (among them an
    editable install of this checkout) are not run, so the checkout is never on the path.
    This works whether the tests run in a venv or a base interpreter, and needs no network.
    """
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root / "dist")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin/python")
    # The wheel first, while the venv sees nothing else: pip finds no celgate installed.
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, timeout=300, env=venv_env(venv), cwd="/")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=venv_env(venv), cwd="/",
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "zz_celgate_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    return venv


def _container_config(folder: Path, port: int) -> Path:
    """deploy/ as mounted, but listening on loopback: tests never bind other addresses."""
    (folder / "rules").mkdir()
    for rule in (DEPLOY / "rules").iterdir():
        (folder / "rules" / rule.name).write_bytes(rule.read_bytes())
    text = (DEPLOY / "config.yaml").read_text()
    text, n = re.subn(r"(?m)^listen:.*$", f"listen: {{host: 127.0.0.1, port: {port}}}", text)
    assert n == 1
    path = folder / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def container(installed: Path, tmp_path: Path) -> Iterator[tuple[PeerProcess, int]]:
    port = free_port()
    config = _container_config(tmp_path, port)
    with running_valkey() as valkey:
        demo = start_demo_server()
        env = {
            **venv_env(installed),
            "PYTHONPATH": "",  # empty: Python ignores it; the checkout stays off the path
            **deploy_env(CELGATE_DEMO_URL=demo.url, CELGATE_LIMITS_BACKEND=valkey.url),
        }
        argv = [str(installed / "bin" / ENTRY[0]), *ENTRY[1:3], str(config)]
        proc = start_process(argv, port=None, url="", extra_env=env, log_path=tmp_path / "log")
        try:
            wait_healthy(port, proc)
            yield proc, port
        finally:
            proc.stop()
            demo.stop()


class TestInstalledWheel:
    """The container's entry command, run from the wheel in a fresh venv, serves the config."""

    def test_the_venv_imports_the_wheel_not_the_checkout(self, installed: Path) -> None:
        code = "import gateway; print(gateway.__file__)"
        python = str(installed / "bin/python")
        env = venv_env(installed)
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/", env=env)
        assert out.stdout.startswith(str(installed)), out.stdout + out.stderr

    def test_the_rules_ship_in_the_wheel(self, installed: Path) -> None:
        assert list(installed.glob("lib/python*/site-packages/gateway/_rules/demo.yaml"))

    async def test_entry_command_serves_health_and_mcp(
        self, container: tuple[PeerProcess, int]
    ) -> None:
        _, port = container
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            assert json.loads(resp.read()) == {"status": "alive"}
        async with client(f"http://127.0.0.1:{port}/mcp/demo", key=KEY) as mcp:
            names = {tool.name for tool in (await mcp.list_tools()).tools}
            assert "list_notes" in names
            result = await mcp.call_tool("list_notes", {})
            assert not result.is_error

    def test_metrics_need_the_admin_token(self, container: tuple[PeerProcess, int]) -> None:
        _, port = container
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=2)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(request, timeout=2) as resp:
            assert b"celgate_" in resp.read()

    def test_the_wheels_cli_reaches_the_admin_api(
        self, installed: Path, container: tuple[PeerProcess, int], tmp_path: Path
    ) -> None:
        # the container config (written by the fixture into tmp_path) names its listen address
        env = {**venv_env(installed), "CELGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        argv = [
            str(installed / "bin/celgate"),
            "approvals",
            "list",
            "--config",
            str(tmp_path / "config.yaml"),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "no pending approval requests"

    def test_entry_command_words(self) -> None:
        assert shlex.join(ENTRY) == "celgate run --config /etc/celgate/config.yaml"
