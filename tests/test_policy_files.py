"""Which files of a policy folder are rules, and when a change to them is seen: a member that
is no regular file (a dangling link, a FIFO) is refused with its name, never skipped (its
rules dropped: a held tool ran with no human), and a new version with the old mtime and size
(``cp -p``, ``rsync -a``) is noticed."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gateway.config import load_config
from gateway.errors import ConfigError, Problem
from gateway.inventory.pins import Pins, tool_digest
from gateway.located import parse_source
from gateway.policy import Call, CompiledPolicy, decide
from gateway.policy.files import labelled_files
from gateway.policy.loader import load_policy, rule_files
from gateway.server.build import build_gateway
from gateway.server.reload import Reloader, _snapshot
from tests.gateway_proc import write_config

BASE = 'version: "1"\ndefault: allow\n'
HOLD = 'version: "1"\ntools:\n  delete_note: {action: require_approval}\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "base.yaml").write_text(BASE)
    return rules


@pytest.mark.parametrize("kind", ["dangling link", "fifo", "link to a fifo"])
def test_a_rule_file_that_is_no_regular_file_is_refused(
    folder: Path, tmp_path: Path, kind: str
) -> None:
    hold = folder / "hold.yaml"
    if kind == "dangling link":
        hold.symlink_to(tmp_path / "moved-away" / "hold.yaml")
    elif kind == "fifo":
        os.mkfifo(hold)
    else:
        os.mkfifo(tmp_path / "pipe")
        hold.symlink_to(tmp_path / "pipe")
    assert str(hold) in [display for _, display in rule_files([folder])]
    with pytest.raises(ConfigError) as caught:
        load_policy([folder])
    assert f"{hold}:1: " in str(caught.value)  # "cannot read", or "no such file"


DENY_FLOW = "{tools: {delete_note: {action: deny}}}\n"


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("guard.test.yaml", "block"),
        ("load_test.yaml", "block"),
        ("ab.test.json", "json"),
        # The keys were looked for at a line's start: in flow style, indented, or after a
        # byte-order mark, they were missed and the file skipped (red-team wave 61).
        ("guard_test.yaml", "flow"),
        ("wipe.test.yaml", "bom"),
        ("in.test.yml", "indented"),
    ],
)
def test_rules_in_a_file_named_as_a_test_are_read(folder: Path, name: str, layout: str) -> None:
    """A file named as a policy test was skipped as one whatever it held: under ``default:
    allow`` a ``guard.test.yaml`` of deny rules was dropped without a word, ``celgate check``
    said ok and the tool ran (red-team wave 58). Rules are read as rules; test files (their
    ``cases``) are still left to ``celgate test``."""
    from gateway.policy.tester import find_test_files

    deny = {"version": "1", "tools": {"delete_note": {"action": "deny"}}}
    block = HOLD.replace("require_approval", "deny")
    text = {
        "json": json.dumps(deny),
        "block": block,
        "flow": DENY_FLOW,
        "bom": "\ufeff" + block,
        "indented": "".join("  " + line + "\n" for line in block.splitlines()),
    }[layout]
    (folder / name).write_text(text, encoding="utf-8")
    (folder / "base_test.yaml").write_text("policy: base.yaml\ncases: []\n")
    assert sorted(Path(d).name for _, d in rule_files([folder])) == sorted(["base.yaml", name])
    call = Call(tool="delete_note", server="demo", identity=None)
    assert decide(load_policy([folder]), call, None).effect == "deny"
    assert [p.name for p in find_test_files([str(folder)])] == ["base_test.yaml"]


def test_a_file_named_as_a_test_that_does_not_parse_is_refused(folder: Path) -> None:
    """What a test-named file that does not parse holds is not known: it is refused with its
    line, never skipped."""
    (folder / "guard_test.yaml").write_text("{tools: {delete_note: {action: deny}}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy([folder])
    assert "guard_test.yaml:" in str(caught.value)


def test_a_symlinked_subfolder_is_read(folder: Path, tmp_path: Path) -> None:
    """A rules folder's symlinked subfolder was skipped without a word (``rglob`` goes into
    none): under ``default: allow`` its hold was gone (red-team wave 47). It is read, each
    real folder once (a link back up ends there)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hold.yaml").write_text(HOLD)
    (folder / "shared").symlink_to(shared)
    (shared / "up").symlink_to(folder)  # a loop: read once
    assert [label for _, _, label in labelled_files([folder])] == [
        "base.yaml",
        "shared/hold.yaml",
    ]
    policy = load_policy([folder])
    assert decide(policy, Call("delete_note", server="notes")).effect == "require_approval"


def test_a_subfolder_that_cannot_be_listed_is_refused(folder: Path) -> None:
    locked = folder / "locked"
    locked.mkdir()
    (locked / "hold.yaml").write_text(HOLD)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user reads any folder (root)")
        with pytest.raises(ConfigError) as caught:
            load_policy([folder])
        assert f"{locked}:1: " in str(caught.value)
    finally:
        locked.chmod(0o755)


def test_a_held_tool_stays_held_while_its_file_is_whole(folder: Path) -> None:
    (folder / "hold.yaml").write_text(HOLD)
    policy = load_policy([folder])
    assert decide(policy, Call("delete_note", server="notes")).effect == "require_approval"


def test_a_new_version_with_the_old_mtime_and_size_is_seen(folder: Path) -> None:
    rule = folder / "base.yaml"
    before = _snapshot([folder])
    stat = rule.stat()
    rule.write_text(BASE.replace("allow", "deny "))  # one character more, one less
    os.utime(rule, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p leaves it
    after = rule.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert _snapshot([folder]) != before


def test_a_file_renamed_into_place_with_the_old_mtime_is_seen(folder: Path) -> None:
    rule = folder / "base.yaml"
    before = _snapshot([folder])
    stat = rule.stat()
    fresh = folder / ".base.yaml.tmp"
    fresh.write_text(BASE.replace("allow", "deny "))
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fresh.rename(rule)
    assert _snapshot([folder]) != before


class TestPinsFile:
    """The pins file is read as rule files are: a FIFO in its place held the whole gateway
    at reload, and conflict markers from a merge ended ``celgate run`` with a traceback."""

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("<<<<<<< HEAD\nservers: {}\n=======\nservers: {a: {}}\n>>>>>>> b\n", "pins.yaml:"),
            ("- one\n- two\n", "`servers:` must map"),
            ("servers: 3\n", "`servers:` must map"),
            ("servers: {up: [x]}\n", "servers.up must map tools"),
            ("servers: {up: {echo: {a: 1}}}\n", "servers.up.echo must be a digest"),
        ],
    )
    def test_what_is_no_pins_file_is_refused_with_its_place(
        self, tmp_path: Path, text: str, says: str
    ) -> None:
        path = tmp_path / "pins.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            Pins.load(path)
        assert f"{path}:" in str(caught.value) and says in str(caught.value)

    @pytest.mark.parametrize("kind", ["fifo", "dangling link"])
    def test_what_is_no_regular_file_is_refused_at_once(self, tmp_path: Path, kind: str) -> None:
        path = tmp_path / "pins.yaml"
        if kind == "fifo":
            os.mkfifo(path)  # read with blocking, this waited for a writer forever
        else:
            path.symlink_to(tmp_path / "gone" / "pins.yaml")
        with pytest.raises(ConfigError) as caught:
            Pins.load(path)
        assert f"{path}:1: pins: cannot read" in str(caught.value)

    def test_a_pins_file_not_there_yet_is_no_pins(self, tmp_path: Path) -> None:
        assert Pins.load(tmp_path / "pins.yaml").pinned == {}
        written = tmp_path / "written.yaml"
        written.write_text("servers:\n  up:\n    echo: sha256:abc\n")
        assert Pins.load(written).pinned == {("up", "echo"): "sha256:abc"}


async def test_a_reload_compiles_off_the_event_loop(tmp_path: Path) -> None:
    """Rules compile at about a millisecond each: a reload run on the event loop stopped every
    call for as long (a second for a thousand rules). The loop keeps turning while it loads,
    and the new policy is in place once ``reload`` returns."""
    config = write_config(tmp_path, BASE, {"up": {"url": "http://127.0.0.1:9/mcp"}}, 9)
    gateway = build_gateway(load_config(config))
    reloader = Reloader(gateway)
    loop_turned = threading.Event()
    load = reloader.load_stable

    def waits_for_the_loop() -> CompiledPolicy:
        if not loop_turned.wait(10):
            raise AssertionError("the event loop stood still while the rules loaded")
        return load()

    reloader.load_stable = waits_for_the_loop  # type: ignore[method-assign]
    (tmp_path / "policy.yaml").write_text(BASE + "tools:\n  delete_note: {action: deny}\n")
    async with anyio.create_task_group() as tg:
        outcome: list[bool] = []

        async def reload() -> None:
            outcome.append(await reloader.reload("test"))

        tg.start_soon(reload)
        await anyio.lowlevel.checkpoint()
        loop_turned.set()
    assert outcome == [True]
    assert decide(gateway.policy, Call(server="up", tool="delete_note")).effect == "deny"


async def test_a_pins_rollback_is_taken_while_the_rules_fail_to_load(tmp_path: Path) -> None:
    """The operator pinned an unreviewed definition by mistake, then rolled the pins file
    back while a rule file was half edited: the reload was refused for the rules and the
    pins were never read, so the unreviewed definition kept running (red-team wave 42)."""
    reviewed = {"name": "echo", "description": "reviewed"}
    shown = {"name": "echo", "description": "unreviewed"}
    pins_file = tmp_path / "pins.yaml"
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    config = write_config(tmp_path, BASE, servers, 9, pins={"file": "pins.yaml"})
    pins_file.write_text(f"servers:\n  up:\n    echo: {tool_digest(shown)}\n")
    gateway = build_gateway(load_config(config))
    reloader = Reloader(gateway)
    gateway.pins.observe("up", shown)
    assert gateway.pins.refusal("up", "echo") is None  # pinned as shown (the mistake)
    (tmp_path / "policy.yaml").write_text(BASE + "tools:\n  echo: {action: allow, colour: red}\n")
    pins_file.write_text(f"servers:\n  up:\n    echo: {tool_digest(reviewed)}\n")
    assert await reloader.reload("test") is False  # the rules are refused...
    assert gateway.pins.refusal("up", "echo") is not None  # ...and the pins taken all the same


def _json_rules(folder: Path, name: str, entry: dict[str, object]) -> Path:
    """A JSON rule file as ``json.dump`` writes it (ASCII, with escapes)."""
    path = folder / name
    path.write_text(json.dumps({"version": "1", "default": "deny", "tools": {"note": entry}}))
    return path


def test_a_json_rule_file_means_what_the_json_parser_reads(tmp_path: Path) -> None:
    """JSON files were read by PyYAML: ``json.dump``'s ``"\\ud83d\\udca5"`` (one emoji) became
    two lone surrogates, so a rule denying the emoji never matched and the call ran; a raw
    U+0085 in a string folded to a space; ``1e3`` was the string "1e3"."""
    rules = [
        {"when": 'args.text.contains("\U0001f4a5")', "action": "deny", "reason": "no bombs"},
        {"when": 'args.text == "a\x85   b"', "action": "deny", "reason": "next line"},
    ]
    path = _json_rules(tmp_path, "rules.json", {"rules": rules, "action": "allow"})
    assert "\\ud83d\\udca5" in path.read_text()
    policy = load_policy([path])

    def effect(**args: object) -> str:
        return decide(policy, Call("note", server="s", args=args)).effect

    assert effect(text="\U0001f4a5", size=1) == "deny"
    assert effect(text="a\x85   b", size=1) == "deny"
    assert effect(text="plain", size=1) == "allow"
    problems: list[Problem] = []
    node = parse_source('{"n": 1e3, "m": 5}', True, "n.json", problems)
    assert node is not None and node.plain() == {"n": 1000.0, "m": 5} and problems == []


@pytest.mark.parametrize("suffix", [".json", ".JSON", ".yaml"])
def test_a_string_that_is_no_unicode_text_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rules{suffix}"
    text = '{"version": "1", "tools": {"note": {"action": "deny", "reason": "half \\ud83d"}}}'
    path.write_text(text)
    with pytest.raises(ConfigError, match="no Unicode text"):
        load_policy([path])


def test_a_json_file_with_an_upper_case_suffix_is_parsed_as_json(tmp_path: Path) -> None:
    path = tmp_path / "RULES.JSON"
    path.write_text('{"version": "1", "tools": {"note": {"action": "allow",}}}')  # YAML takes it
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_policy([path])


@pytest.mark.parametrize(
    ("suffix", "value"),
    [
        (".json", "NaN"),
        (".json", "Infinity"),
        (".json", "1e999"),
        (".yaml", ".nan"),
        (".yaml", ".inf"),
        (".yaml", "1.0e+999"),
    ],
)
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, suffix: str, value: str) -> None:
    """NaN passed every "positive number" check (NaN <= 0 is false) and stopped the gateway
    at its first timer; 1e999 made a window that never refills."""
    path = tmp_path / f"rules{suffix}"
    limit = f'{{"rate": 1, "window": {value}}}'
    path.write_text(f'{{"version": "1", "tools": {{"note": {{"limit": {limit}}}}}}}')
    with pytest.raises(ConfigError) as caught:
        load_policy([path])
    assert any("finite" in str(p) or "not JSON" in str(p) for p in caught.value.problems)


@pytest.mark.parametrize(
    "entry",
    [
        '{"limits": [{"counter": "c", "window": 1.0e+308, "max": 1}]}',
        '{"action": "require_approval", "approval": {"timeout": 1.0e+308}}',
    ],
)
def test_a_window_or_timeout_past_a_year_is_refused(tmp_path: Path, entry: str) -> None:
    """A window of 1e308 s is finite: the wait told to a refused caller overflowed, and
    every refusal became an internal error."""
    path = tmp_path / "rules.json"
    path.write_text(f'{{"version": "1", "tools": {{"note": {entry}}}}}')
    with pytest.raises(ConfigError, match="at most 31622400 s"):
        load_policy([path])


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        ('"window": 1e-300, "max": 5', "at least 0.001 s"),
        ('"window": 0.0009, "max": 5', "at least 0.001 s"),
        ('"window": "second", "max": 1000000000000000000000000000000', "at most 1,000,000,000"),
        ('"window": 60, "max": 1000000001', "at most 1,000,000,000"),
    ],
)
def test_a_limit_that_could_limit_nothing_is_refused(
    tmp_path: Path, limit: str, problem: str
) -> None:
    """A window of 1e-300 s refills at once and a bucket of 10^30 is never empty: they
    loaded, and limited nothing (and 10^30 is no whole number in Valkey's doubles)."""
    path = tmp_path / "rules.json"
    entry = f'{{"limits": [{{"counter": "c", {limit}}}]}}'
    path.write_text(f'{{"version": "1", "tools": {{"note": {entry}}}}}')
    with pytest.raises(ConfigError, match=problem):
        load_policy([path])


def test_the_bounds_of_a_limit_load(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    entry = '{"limits": [{"counter": "c", "window": 0.001, "max": 1000000000}]}'
    path.write_text(f'{{"version": "1", "tools": {{"note": {entry}}}}}')
    load_policy([path])
