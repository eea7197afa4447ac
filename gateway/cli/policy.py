"""Offline policy commands: ``check``, ``decide`` and ``test``. No server, no network.

``check --config`` loads the policy as that gateway would and says which entries name a server
it does not serve. ``decide --config`` reads the gateway config for the grant's roles and attrs
(and its policy when no rule path is given), so a decision is made as the running gateway would
make it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, Problem
from gateway.policy import CompiledPolicy, Identity
from gateway.policy.model import KINDS, RISKS

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def _report(exc: ConfigError, what: str = "policy") -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} error(s); {what} rejected", file=sys.stderr)
    return 1


def _check(ns: argparse.Namespace) -> int:
    from gateway.policy import load_policy

    told: list[Problem] = []
    try:
        if ns.config is None:
            if not ns.paths:
                raise SystemExit("celgate: check needs rule paths, or --config")
            policy = load_policy(ns.paths)
            from gateway.policy.servers import entry_warnings

            told = entry_warnings(policy)
        else:  # as the gateway of that config loads it: its engine, and its servers
            from gateway.config import load_config
            from gateway.policy.engines import get_engine
            from gateway.policy.servers import check_servers

            config = load_config(ns.config)
            paths = ns.paths or list(config.policy)
            policy = load_policy(paths, get_engine(config.cel.engine))
            told = check_servers(policy, config.servers)
    except ConfigError as exc:
        return _report(exc, "config or policy" if ns.config else "policy")
    for problem in told:
        print(f"warning: {problem}", file=sys.stderr)
    entries = len(policy.entries)
    rules = sum(len(e.rules) for e in policy.entries)
    limits = sum(len(e.limits) for e in policy.entries)
    print(
        f"ok: {len(policy.sources)} file(s), {entries} tool entries, {rules} rules, "
        f"{limits} limits, default {policy.default}, revision {policy.revision}"
    )
    return 0


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"celgate: {what} is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # 5,000 digits, 5,000 nested lists
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise SystemExit(f"celgate: {what} cannot be read: {reason}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"celgate: {what} must be a JSON object")
    return value


def _flag_identity(ns: argparse.Namespace) -> Identity:
    roles = tuple(r for r in (ns.roles or "").split(",") if r)
    attrs = _json_object(ns.attrs or "{}", "--attrs")
    return Identity(grant=ns.grant, agent=ns.agent or ns.grant, roles=roles, attrs=attrs)


def _config_identity(ns: argparse.Namespace, config: GatewayConfig) -> Identity:
    """The grant as the config defines it; --roles, --attrs and --agent replace its values."""
    found = config.grants.get(ns.grant)
    if found is None:
        known = ", ".join(sorted(config.grants)) or "none"
        raise SystemExit(f"celgate: no grant {ns.grant!r} in {config.source} (grants: {known})")
    roles = found.roles if ns.roles is None else tuple(r for r in ns.roles.split(",") if r)
    attrs = found.attrs if ns.attrs is None else _json_object(ns.attrs, "--attrs")
    return Identity(grant=found.id, agent=ns.agent or found.agent, roles=roles, attrs=attrs)


def _policy_and_identity(
    ns: argparse.Namespace,
) -> tuple[CompiledPolicy, Identity, tuple[str, ...] | None]:
    """The policy, the caller, and the servers its grant reaches (None: every one)."""
    from gateway.policy import load_policy

    if ns.config is None:
        if ns.path is None:
            raise SystemExit("celgate: decide needs a rule path, or --config")
        if ns.grant != "anonymous" and ns.roles is None and ns.attrs is None:
            # A grant's roles and attrs are in the config: without it, a rule on them
            # ("deny interns") read as allow, and nothing said why (red-team wave 37).
            print(
                f"warning: no --config: grant {ns.grant!r} is decided with no roles and no "
                "attrs (give --config to use the grant's, or --roles/--attrs)",
                file=sys.stderr,
            )
        return load_policy([ns.path]), _flag_identity(ns), None
    from gateway.config import load_config
    from gateway.policy.engines import get_engine
    from gateway.policy.servers import check_servers

    config = load_config(ns.config)
    paths = [ns.path] if ns.path else list(config.policy)
    identity = _config_identity(ns, config) if ns.grant != "anonymous" else _flag_identity(ns)
    found = config.grants.get(ns.grant)
    reach = found.servers if found is not None else None
    policy = load_policy(paths, get_engine(config.cel.engine))
    # As the gateway loads it: a policy it would refuse (an entry naming a server in another
    # case) is refused here too, never decided as if it ran.
    for problem in check_servers(policy, config.servers):
        print(f"warning: {problem}", file=sys.stderr)
    return policy, identity, reach


def _decide(ns: argparse.Namespace) -> int:
    from gateway.policy import Call, decide
    from gateway.policy.risk import tool_info

    try:
        policy, identity, reach = _policy_and_identity(ns)
    except ConfigError as exc:
        return _report(exc, "config or policy" if ns.config else "policy")
    if reach is not None and ns.server is not None and ns.server not in reach:
        # The gateway answers 403 insufficient_scope before any rule is read (as catalog says).
        reason = f"grant {identity.grant!r} reaches only: {', '.join(reach)}"
        out = {"effect": "deny (servers)", "reason": reason, "rule": None}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    now = _now(ns.now)
    call = Call(
        tool=ns.tool,
        server=ns.server,
        args=_json_object(ns.args, "--args"),
        identity=identity,
        session=ns.session,
        # Classified as the gateway classifies a listed tool (overrides, annotations, name);
        # --risk and --kind replace what that gives.
        info=tool_info(policy, ns.server or "", _definition(ns), risk=ns.risk, kind=ns.kind),
    )
    print(json.dumps(decide(policy, call, now).to_dict(), indent=2, ensure_ascii=False))
    return 0


def _now(text: str | None) -> datetime:
    from gateway.policy.decide import as_utc

    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
        as_utc(value)
        return value
    except (ValueError, OverflowError):  # (9999-12-31T23:59:59-10:00 is past year 9999 in UTC)
        raise SystemExit(
            f"--now: {text!r} is not an ISO 8601 time of years 1 to 9999 in UTC "
            "(2026-01-05T10:00:00Z)"
        ) from None


def _definition(ns: argparse.Namespace) -> dict[str, object]:
    definition: dict[str, object] = {"name": ns.tool}
    if ns.annotations is not None:
        definition["annotations"] = _json_object(ns.annotations, "--annotations")
    return definition


def _test(ns: argparse.Namespace) -> int:
    from gateway.policy.tester import find_test_files, run_file

    files = find_test_files(ns.paths)
    if not files:
        print("no policy test files (*_test.yaml) found")
        return 1
    total, failed = 0, 0
    cache: dict[tuple[str, ...], CompiledPolicy] = {}
    for path in files:
        try:
            count, failures = run_file(Path(path), cache)
        except ConfigError as exc:  # the file (or its policy) did not load: one failure
            print(exc)
            total += 1
            failed += 1
            continue
        total += count
        failed += len(failures)
        for line in failures:
            print(f"FAIL {line}")
    status = "ok" if failed == 0 else "FAILED"
    print(f"{status}: {total - failed} passed, {failed} failed, in {len(files)} file(s)")
    return 0 if failed == 0 else 1


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="rule files or folders (default: --config's)")
    parser.add_argument(
        "--config",
        help="gateway config: its policy (unless paths are given), CEL engine and servers "
        "(an entry naming a server it does not have is said)",
    )
    parser.set_defaults(func=_check)


def _configure_decide(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", help="a rule file or folder (default: --config's)")
    parser.add_argument("--config", help="gateway config: the grant's roles, attrs and policy")
    parser.add_argument("--tool", required=True)
    parser.add_argument("--server")
    parser.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    parser.add_argument("--grant", default="anonymous")
    parser.add_argument("--agent", help="agent name (default: the grant's)")
    parser.add_argument("--roles", help="comma-separated roles (default: the grant's)")
    parser.add_argument("--attrs", help="grant attributes as a JSON object (default: the grant's)")
    parser.add_argument("--session")
    parser.add_argument(
        "--annotations", help="the tool's MCP annotations as a JSON object (risk and kind)"
    )
    parser.add_argument(
        "--risk", choices=RISKS, help="tool.risk as CEL sees it (default: as classified)"
    )
    parser.add_argument(
        "--kind", choices=KINDS, help="tool.kind as CEL sees it (default: as classified)"
    )
    parser.add_argument("--now", help="ISO 8601 time to decide at (default: now)")
    parser.set_defaults(func=_decide)


def _configure_test(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="folders or test files")
    parser.set_defaults(func=_test)


PARSERS = {"check": _configure_check, "decide": _configure_decide, "test": _configure_test}
