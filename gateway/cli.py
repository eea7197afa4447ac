"""The ``celgate`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _check(ns: argparse.Namespace) -> int:
    from gateway.policy import load_policy

    try:
        policy = load_policy(ns.paths)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} error(s); policy rejected", file=sys.stderr)
        return 1
    entries = len(policy.entries)
    rules = sum(len(e.rules) for e in policy.entries)
    limits = sum(len(e.limits) for e in policy.entries)
    print(
        f"ok: {len(policy.sources)} file(s), {entries} tool entries, {rules} rules, "
        f"{limits} limits, default {policy.default}, revision {policy.revision}"
    )
    return 0


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"celgate: {what} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"celgate: {what} must be a JSON object")
    return value


def _decide(ns: argparse.Namespace) -> int:
    from gateway.policy import Call, Identity, ToolInfo, decide, load_policy

    try:
        policy = load_policy([ns.path])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    roles = tuple(r for r in (ns.roles or "").split(",") if r)
    attrs = _parse_json_object(ns.attrs, "--attrs")
    identity = Identity(grant=ns.grant, agent=ns.agent or ns.grant, roles=roles, attrs=attrs)
    info = ToolInfo(risk=ns.risk, kind=ns.kind)
    call = Call(
        tool=ns.tool,
        server=ns.server,
        args=_parse_json_object(ns.args, "--args"),
        identity=identity,
        session=ns.session,
        info=info,
    )
    now = datetime.fromisoformat(ns.now) if ns.now else datetime.now(UTC)
    decision = decide(policy, call, now)
    print(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _add_policy_commands(sub: Any) -> None:
    check = sub.add_parser("check", help="load rule files and report every error")
    check.add_argument("paths", nargs="+", help="rule files or folders")
    check.set_defaults(func=_check)

    dec = sub.add_parser("decide", help="decide one call offline and print the Decision")
    dec.add_argument("path", help="a rule file or folder")
    dec.add_argument("--tool", required=True)
    dec.add_argument("--server")
    dec.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    dec.add_argument("--grant", default="anonymous")
    dec.add_argument("--agent", help="agent name (defaults to the grant)")
    dec.add_argument("--roles", default="", help="comma-separated roles")
    dec.add_argument("--attrs", default="{}", help="grant attributes as a JSON object")
    dec.add_argument("--session")
    dec.add_argument("--risk", default="unknown", help="tool.risk as CEL sees it")
    dec.add_argument("--kind", default="unknown", help="tool.kind as CEL sees it")
    dec.add_argument("--now", help="ISO 8601 time to decide at (default: now)")
    dec.set_defaults(func=_decide)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celgate", description="MCP policy gateway")
    parser.add_argument("--version", action="version", version=f"celgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_policy_commands(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Commands of other parts, registered lazily so ``check`` stays fast to start."""
    from gateway import commands

    return commands.REGISTER


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    func: Handler | None = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return func(ns)


if __name__ == "__main__":
    sys.exit(main())
