"""Which files of a policy folder are rules, and when a change to them is seen: a member that
is no regular file (a dangling link, a FIFO) is refused with its name, never skipped (its
rules dropped: a held tool ran with no human), and a new version with the old mtime and size
(``cp -p``, ``rsync -a``) is noticed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy import Call, decide
from gateway.policy.loader import load_policy, rule_files
from gateway.server.reload import _snapshot

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
