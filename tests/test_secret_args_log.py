"""With ``audit.log_arguments`` on, the values a rule marks secret (``secret_args``) are
masked in the decision record written to the log, as in a held call and the console."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import Call, decide, load_policy
from gateway.policy.secrets import SECRET, mask_args
from gateway.telemetry.audit import DecisionLog, args_digest
from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import http_upstream

POLICY = r"""
version: "1"
default: deny
tools:
  echo:
    action: allow
    secret_args: [token, auth.key]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with http_upstream() as up:
        directory: Path = tmp_path_factory.mktemp("secret-log")
        audit = {"log_arguments": True}
        with run_gateway(directory, POLICY, {"up": {"url": up.url}}, audit=audit) as gw:
            yield gw


async def test_secret_values_never_reach_the_log(gateway: GatewayProcess) -> None:
    args = {"text": "visible", "token": "hunter2", "auth": {"key": "k-123", "user": "ann"}}
    async with client(gateway.url("up"), mode="auto") as c:
        await c.call_tool("echo", args)
    record = gateway.wait_records(1, where=lambda r: r.get("tool") == "echo")[0]
    assert record["args"] == {
        "text": "visible",
        "token": SECRET,
        "auth": {"key": SECRET, "user": "ann"},
    }
    assert "hunter2" not in gateway.peer.output() and "k-123" not in gateway.peer.output()


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_the_engines_message_does_not_carry_a_secret(tmp_path: Path, mode: str) -> None:
    """A secret of the wrong type under a rule on it: cel-python's message names the operand
    (``StringType('hunter2...')``), and ``error_detail`` went to the log, ``/admin/decisions``
    and the live feed unmasked."""
    rules = tmp_path / "p.yaml"
    rules.write_text(
        'version: "1"\ntools:\n  login:\n    secret_args: [password]\n    rules:\n'
        f"      - {{when: 'args.password > 5', action: deny, mode: {mode}}}\n"
        "    action: allow\n"
    )
    policy = load_policy([rules])
    call = Call("login", server="s", args={"password": "hunter2-TOPSECRET-991"})
    decision = decide(policy, call)
    seen = repr(decision)
    assert "TOPSECRET" not in seen
    assert (decision.error or decision.shadow[0].error or "").startswith("cel.")


def test_the_digest_shown_beside_masked_arguments_is_of_the_masked_ones() -> None:
    """An unkeyed sha256 of the real arguments, shown beside every other value, gave a 4-digit
    PIN to anyone who hashed ten thousand guesses. The approval's match still binds the real
    arguments; what is shown is a digest of what is shown."""
    call = Call("login", server="s", args={"user": "ann", "pin": "4821"})
    record = DecisionLog().record("d1", call, decide(load_policy_text(), call), 0.1, ("pin",))
    masked = mask_args(call.args, ("pin",))
    assert record["args_digest"] == args_digest(masked) != args_digest(call.args)
    plain = Call("login", server="s", args={"user": "ann"})
    record = DecisionLog().record("d2", plain, decide(load_policy_text(), plain), 0.1, ("pin",))
    assert record["args_digest"] == args_digest(plain.args)  # no secret in it: as it is


def load_policy_text() -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.yaml"
        path.write_text('version: "1"\ntools:\n  login: {secret_args: [pin]}\n')
        return load_policy([path])


async def test_a_secret_is_digested_masked_with_arguments_not_logged(tmp_path: Path) -> None:
    """``audit.log_arguments`` off (the default): the record shows no arguments, but its
    ``args_digest`` of a call whose only argument is a 4-digit PIN gave the PIN away to ten
    thousand hashes just the same."""
    args = {"text": "visible", "token": "4821"}
    with http_upstream() as up, run_gateway(tmp_path, POLICY, {"up": {"url": up.url}}) as gw:
        async with client(gw.url("up"), mode="auto") as c:
            await c.call_tool("echo", args)
        record = gw.wait_records(1, where=lambda r: r.get("tool") == "echo")[0]
    assert "args" not in record
    assert record["args_digest"] == args_digest(mask_args(args, ("token", "auth.key")))
    assert record["args_digest"] != args_digest(args)


def test_a_flat_argument_named_with_a_dot_is_masked_by_its_name() -> None:
    """``secret_args: [db.password]`` went into ``db`` and masked nothing when the tool takes
    a flat ``"db.password"`` (as many do: ``aws.secret_access_key``); the value showed on the
    desk and in the records."""
    args = {"db.password": "hunter2", "db": {"password": "s3", "user": "ann"}, "x": [{"a.b": 1}]}
    masked = mask_args(args, ("db.password", "x.a.b"))
    assert masked == {
        "db.password": SECRET,
        "db": {"password": SECRET, "user": "ann"},
        "x": [{"a.b": SECRET}],
    }
    assert args["db.password"] == "hunter2"  # a copy: the call keeps its real values
    # Every way the dots split into names: ``"db.conn"`` then ``password`` was missed.
    split = {"db.conn": {"password": "a"}, "db": {"conn.password": "b", "conn": {"password": "c"}}}
    assert mask_args(split, ("db.conn.password",)) == {
        "db.conn": {"password": SECRET},
        "db": {"conn.password": SECRET, "conn": {"password": SECRET}},
    }
