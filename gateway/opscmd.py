"""Operator commands: ``celgate keys new``, ``celgate approvals ...``, ``celgate limits ...``.

The approval and limit commands talk to a running gateway's admin API, so they work the same
against any replica (the state is shared through the backend).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import httpx

from gateway.identity import new_key


def _keys_new(ns: argparse.Namespace) -> int:
    key, digest = new_key()
    print(f"key (shown once, give it to the agent): {key}")
    print("\nadd to the gateway config under `grants:`")
    print(f"  {ns.grant}:\n    key_sha256: {digest}")
    return 0


def _admin(ns: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    token = ns.token or os.environ.get("CELGATE_ADMIN_TOKEN")
    if not token:
        raise SystemExit("celgate: an admin token is needed (--token or CELGATE_ADMIN_TOKEN)")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        resp = httpx.request(method, ns.url.rstrip("/") + path, headers=headers, json=body)
    except httpx.HTTPError as exc:
        raise SystemExit(f"celgate: cannot reach the gateway at {ns.url}: {exc}") from None
    if resp.status_code >= 400:
        detail = resp.json().get("detail", resp.text) if resp.content else resp.reason_phrase
        raise SystemExit(f"celgate: {resp.status_code}: {detail}")
    return resp.json()


def _approvals(ns: argparse.Namespace) -> int:
    if ns.action == "list":
        query = "?status=pending" if not ns.all else ""
        items = _admin(ns, "GET", "/admin/approvals" + query)
        if ns.json:
            print(json.dumps(items, indent=2))
            return 0
        if not items:
            print("no approval requests" if ns.all else "no pending approval requests")
        for r in items:
            target = f"{r['server']}/{r['tool']}"
            print(f"{r['id']}  {r['status']:<8} {r['grant']} -> {target}  {r['reason']}")
        return 0
    if not ns.id:
        raise SystemExit(f"celgate: approvals {ns.action} needs an approval ID")
    body = {"by": ns.by, "note": ns.note}
    result = _admin(ns, "POST", f"/admin/approvals/{ns.id}/{ns.action}", body)
    print(f"{result['id']}: {result['status']} by {result['decided_by']}")
    return 0


def _limits(ns: argparse.Namespace) -> int:
    if ns.action == "reset":
        if not (ns.grant or ns.counter or ns.all):
            raise SystemExit("celgate: limits reset needs --grant, --counter or --all")
        body = {"grant": ns.grant, "counter": ns.counter, "all": ns.all}
        result = _admin(ns, "POST", "/admin/limits/reset", body)
        print(f"refilled {result['refilled']} bucket(s)")
        for key in result["keys"]:
            print(f"  {key}")
        return 0
    query = f"?grant={ns.grant}" if ns.grant else ""
    rows = _admin(ns, "GET", "/admin/limits" + query)
    if not rows:
        print("every bucket is full (no recent calls under a limit)")
    for row in rows:
        print(f"{row['key']}  remaining {row['remaining']}")
    return 0


def _admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8787", help="the gateway's base URL")
    parser.add_argument("--token", help="admin token (default: $CELGATE_ADMIN_TOKEN)")


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="agent keys")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True)
    new = keys_sub.add_parser("new", help="print a new agent key once, and its config line")
    new.add_argument("--grant", required=True)
    new.set_defaults(func=_keys_new)

    appr = sub.add_parser("approvals", help="list, approve or deny held calls")
    appr.add_argument("action", choices=["list", "approve", "deny"])
    appr.add_argument("id", nargs="?")
    appr.add_argument("--by", default=os.environ.get("USER", "admin"))
    appr.add_argument("--note")
    appr.add_argument("--all", action="store_true", help="list decided requests too")
    appr.add_argument("--json", action="store_true")
    _admin_args(appr)
    appr.set_defaults(func=_approvals)

    limits = sub.add_parser("limits", help="rate-limit buckets")
    limits.add_argument("action", choices=["show", "reset"])
    limits.add_argument("--grant")
    limits.add_argument("--counter", help="reset: only this counter's buckets")
    limits.add_argument("--all", action="store_true", help="reset: every bucket")
    _admin_args(limits)
    limits.set_defaults(func=_limits)
