"""``celgate catalog`` (what agents could call, with kind and risk) and ``celgate pins update``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.inventory.discovery import list_all
from gateway.inventory.pins import write_pins
from gateway.policy import ANONYMOUS, Call, CompiledPolicy, Identity, ToolInfo, decide, load_policy
from gateway.policy.engines import get_engine
from gateway.policy.risk import classify, override_for
from gateway.policy.visibility import visible
from gateway.printable import printable


def _identity(config: GatewayConfig, grant: str | None) -> Identity:
    if grant is None:
        return ANONYMOUS
    found = config.grants.get(grant)
    if found is None:
        raise SystemExit(f"celgate: no grant named {grant!r} in {config.source}")
    return Identity(grant=found.id, agent=found.agent, roles=found.roles, attrs=found.attrs)


def _effect(policy: CompiledPolicy, call: Call) -> str:
    """The effect with no arguments; 'conditional' when it depends on the arguments."""
    decision = decide(policy, call)
    if decision.error and decision.error.startswith("cel."):
        return "conditional" if visible(policy, call) else "deny"
    if decision.effect == "deny" and visible(policy, call):
        return "conditional"
    if decision.effect != "deny" and _other_effects(policy, decision.entry, decision.effect):
        return "conditional"  # allowed (or held) as called bare; other arguments decide otherwise
    return decision.effect


def _other_effects(policy: CompiledPolicy, key: str | None, effect: str) -> bool:
    """Whether the deciding entry has conditions, and a way to another effect (a rule, or
    what it falls back to when none holds)."""
    entry = next((e for e in policy.entries if e.key == key), None)
    rules = [r for r in entry.rules if r.mode == "enforce"] if entry is not None else []
    if entry is None or not any(r.when is not None for r in rules):
        return False
    effects = {r.action for r in rules} | {entry.action or policy.default}
    return bool(effects - {effect})


def catalog_rows(
    config: GatewayConfig, policy: CompiledPolicy, tools: dict[str, Any], identity: Identity
) -> list[dict[str, Any]]:
    found_grant = config.grants.get(identity.grant) if identity is not ANONYMOUS else None
    reach = found_grant.servers if found_grant is not None else None
    rows = []
    for server, items in sorted(tools.items()):
        if items is None:
            rows.append({"server": server, "tool": "-", "error": "unreachable"})
            continue
        for tool in sorted(items, key=lambda t: t["name"]):
            name = tool["name"]
            found = classify(name, tool.get("annotations"), override_for(policy, server, name))
            info = ToolInfo(found.risk, found.kind, tool.get("annotations") or {})
            call = Call(tool=name, server=server, identity=identity, info=info)
            row = {"server": server, "tool": name, "kind": found.kind, "risk": found.risk}
            if reach is not None and server not in reach:  # the key never reaches it (403)
                rows.append({**row, "why": "grant's servers", "effect": "deny (servers)"})
                continue
            rows.append({**row, "why": found.why, "effect": _effect(policy, call)})
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    # An upstream names its tools: a name with control characters is shown escaped.
    cols = ["server", "tool", "kind", "risk", "effect", "why"]
    cells = [{c: printable(r.get(c, "")) for c in cols} for r in rows]
    widths = {c: max(len(c), *(len(r[c]) for r in cells)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for row in cells:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())


def _load(ns: argparse.Namespace) -> tuple[GatewayConfig, CompiledPolicy]:
    try:
        config = load_config(ns.config)
        return config, load_policy(config.policy, get_engine(config.cel.engine))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def catalog_command(ns: argparse.Namespace) -> int:
    config, policy = _load(ns)
    identity = _identity(config, ns.grant)
    errors: dict[str, str] = {}
    tools = asyncio.run(list_all(config.servers, errors=errors))
    _say_why(errors)
    rows = catalog_rows(config, policy, tools, identity)
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0 if all(items is not None for items in tools.values()) else 2


def pins_command(ns: argparse.Namespace) -> int:
    config, _ = _load(ns)
    target = Path(ns.out) if ns.out else config.pins.file
    if target is None:
        raise SystemExit("celgate: set `pins: {file: ...}` in the config, or pass --out")
    errors: dict[str, str] = {}
    tools = asyncio.run(list_all(config.servers, errors=errors))
    _say_why(errors)
    down = [name for name, items in tools.items() if items is None]
    if down:
        print(f"celgate: cannot list tools of {', '.join(down)}; pins unchanged", file=sys.stderr)
        return 1
    try:
        count = write_pins(target, {k: v for k, v in tools.items() if v is not None})
    except OSError as exc:  # no such folder, a folder in its place, read-only...
        why = exc.strerror or type(exc).__name__
        raise SystemExit(f"celgate: cannot write {target}: {why}; pins unchanged") from None
    print(f"pinned {count} tools in {target}")
    return 0


def _configure_catalog(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--grant", help="show the effect for this grant (default: anonymous)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=catalog_command)


def _configure_pins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["update"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", help="pins file (default: the config's pins.file)")
    parser.set_defaults(func=pins_command)


PARSERS = {"catalog": _configure_catalog, "pins": _configure_pins}


def _say_why(errors: dict[str, str]) -> None:
    for server, reason in sorted(errors.items()):
        print(f"celgate: cannot list the tools of {server}: {printable(reason)}", file=sys.stderr)
