"""``tool.kind`` and ``tool.risk``, as CEL sees them, follow the policy in force.

A tool is classified once per policy, not on every call: from its listed definition, or, for a
name no upstream has listed, from the name alone (kept for at most ``MAX_UNLISTED`` names,
since callers choose them). A reload whose rule files override a kind or a risk classifies
everything again, listed or not; the admin API's tool rows say the same.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_config
from gateway.pipeline.gateway import MAX_UNLISTED, Gateway
from gateway.policy import load_policy
from gateway.server.build import build_gateway
from tests.gateway_proc import write_config
from tests.peers import free_port

BEFORE = 'version: "1"\ndefault: allow\n'
AFTER = """\
version: "1"
default: allow
tools:
  purge_cache:
    risk: low
  list_orders:
    kind: delete
"""


def gateway_at(tmp_path: Path) -> Gateway:
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}  # never reached
    return build_gateway(load_config(write_config(tmp_path, BEFORE, servers, free_port())))


def reload_with(gw: Gateway, tmp_path: Path, text: str) -> None:
    path = tmp_path / "after.yaml"
    path.write_text(text)
    gw.policy = load_policy([path])  # as the reloader swaps it


def test_a_listed_tool_follows_a_reloaded_override(tmp_path: Path) -> None:
    gw = gateway_at(tmp_path)
    gw.observe("up", {"name": "purge_cache", "annotations": {"destructiveHint": True}})
    assert (gw.tool_info("up", "purge_cache").kind, gw.tool_info("up", "purge_cache").risk) == (
        "delete",
        "high",
    )
    reload_with(gw, tmp_path, AFTER)
    info = gw.tool_info("up", "purge_cache")
    assert (info.kind, info.risk) == ("delete", "low")  # the override, the annotation kept
    assert info.annotations == {"destructiveHint": True}


def test_an_unlisted_tool_is_classified_once_per_policy(tmp_path: Path) -> None:
    gw = gateway_at(tmp_path)
    first = gw.tool_info("up", "list_orders")
    assert (first.kind, first.risk) == ("execute", "high")  # not listed: never by its name
    assert gw.tool_info("up", "list_orders") is first  # not classified again
    reload_with(gw, tmp_path, AFTER)
    again = gw.tool_info("up", "list_orders")
    assert again.kind == "delete" and again is not first


def test_names_kept_are_bounded(tmp_path: Path) -> None:
    gw = gateway_at(tmp_path)
    for n in range(MAX_UNLISTED + 50):
        assert gw.tool_info("up", f"made_up_{n}").kind == "execute"
    assert len(gw.unlisted) == MAX_UNLISTED
    assert gw.tool_info("up", f"made_up_{MAX_UNLISTED + 10}").risk == "high"  # still answered


def test_a_callers_list_cannot_make_a_tool_do_less(tmp_path: Path) -> None:
    """An upstream may show each session its own definitions (by its client's name, or a
    toolset it enabled): one client's list decided how another's calls were classified,
    and lowered a tool held for approval to one allowed (red-team wave 38). The gateway's
    own reading decides; between callers' lists the riskier definition stays."""
    gw = gateway_at(tmp_path)
    wipe = {"name": "wipe", "annotations": {"destructiveHint": True}}
    calm = {"name": "wipe", "annotations": {"readOnlyHint": True}}
    gw.observe("up", wipe, own=True)
    gw.observe("up", calm)  # an attacker's session lists it as read-only
    assert (gw.tool_info("up", "wipe").kind, gw.tool_info("up", "wipe").risk) == (
        "delete",
        "high",
    )
    # a tool the gateway's reading has not seen: callers' lists, the riskier one kept
    gw.observe("up", {**calm, "name": "toolset_tool"})
    assert gw.tool_info("up", "toolset_tool").kind == "read"
    gw.observe("up", {**wipe, "name": "toolset_tool"})
    gw.observe("up", {**calm, "name": "toolset_tool"})
    assert gw.tool_info("up", "toolset_tool").kind == "delete"
    # the gateway's own reading replaces what it saw before (a server's upgrade)
    gw.observe("up", calm, own=True)
    assert gw.tool_info("up", "wipe").kind == "read"


def test_an_unlisted_variant_of_a_listed_or_named_tool_is_refused(tmp_path: Path) -> None:
    """Under ``default: allow`` a deny of ``wipe_records`` let ``WIPE_RECORDS``,
    ``wipe_records `` and ``wipe-records`` through to a server that matches names loosely
    (red-team wave 38): a name its server has not listed that folds to a listed one, or to
    one the policy names, is refused as a name no server has."""
    from gateway.pipeline.admission import verdict
    from gateway.policy import Call

    gw = gateway_at(tmp_path)
    reload_with(
        gw, tmp_path, 'version: "1"\ndefault: allow\ntools:\n  up/wipe_records: {action: deny}\n'
    )
    gw.observe("up", {"name": "list_orders"}, own=True)
    variants = ("WIPE_RECORDS", "wipe_records ", "wipe-records", "\uff37ipe_records", "LIST-ORDERS")
    # and what NFKC and case alone missed (red-team wave 39): the dotless i, which upper-cases
    # to I; inner spaces and other separators; accents, composed or combining; zero width
    variants += (
        "w\u0131pe_records",
        "wipe records",
        "wipe.records",
        "wipeRecords",
        "wipe__records",
        "_wipe_records",
        "w\u00edpe_records",
        "wi\u0301pe_records",
        "wipe\u200brecords",
    )
    for name in variants:
        decision = verdict(gw, Call(tool=name, server="up", info=gw.tool_info("up", name)))
        assert (decision.effect, decision.error) == ("deny", "no_tool"), name
    named = verdict(gw, Call(tool="wipe_records", server="up", info=gw.tool_info("up", "x")))
    assert named.error != "no_tool"  # the name itself: its own entry decides
    for name in ("list_orders", "other_tool"):  # listed, or like nothing: the rules decide
        decision = verdict(gw, Call(tool=name, server="up", info=gw.tool_info("up", name)))
        assert decision.effect == "allow", name


def test_an_unlisted_variant_of_a_glob_is_refused(tmp_path: Path) -> None:
    """The same for a deny or an approval written with a glob: ``DELETE_ALL``, ``Delete-All``
    and ``PURGE_CACHE`` reached a loose server under ``delete_*: deny`` and ``purge_*:
    require_approval`` (red-team wave 57). What the glob matches itself, and what folds to
    nothing like it, are decided by the rules."""
    from gateway.pipeline.admission import verdict
    from gateway.policy import Call

    gw = gateway_at(tmp_path)
    policy = (
        'version: "1"\ndefault: allow\ntools:\n  up/delete_*: {action: deny}\n'
        "  wipe_?: {action: deny}\n  purge_*: {action: require_approval}\n"
    )
    reload_with(gw, tmp_path, policy)
    for name in ("DELETE_ALL", "Delete-All", "deleteAll", "delete all", "WIPE-X", "PURGE_CACHE"):
        decision = verdict(gw, Call(tool=name, server="up", info=gw.tool_info("up", name)))
        assert (decision.effect, decision.error) == ("deny", "no_tool"), name
    ruled = (("delete_all", "deny"), ("purge_x", "require_approval"), ("echo", "allow"))
    for name, effect in ruled:
        decision = verdict(gw, Call(tool=name, server="up", info=gw.tool_info("up", name)))
        assert decision.effect == effect and decision.error != "no_tool", name
