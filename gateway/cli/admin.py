"""Commands that talk to a running gateway's admin API: ``approvals ...`` and ``limits ...``.

Which gateway: ``--url``, else the listen address of ``--config``, else ``$CELGATE_URL``, else
``http://127.0.0.1:8787``. Every way it can go wrong ends in one line naming the URL: nothing
listening, something that is not a celgate gateway (a celgate admin API answers a refused
token with its own ``WWW-Authenticate`` realm and JSON), a refused token, an admin error. The
state is shared through the backend, so any replica will do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gateway.printable import printable

DEFAULT_URL = "http://127.0.0.1:8787"
ADMIN_REALM = 'realm="celgate-admin"'
TIMEOUT_SECONDS = 10.0
# What a listener on every interface is reached at from this host.
_LOCAL_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _expand(value: Any, path: Path, field: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SystemExit(f"celgate: {path}: {field} uses ${{{name}}}, which is not set")
        return os.environ[name]

    return re.sub(r"\$\{(\w+)\}", one, str(value))


def url_from_config(path: Path) -> str:
    """The base URL of the gateway a config file describes (only ``listen:`` is read, so the
    secrets the rest of the file names need not be set here)."""
    import yaml

    from gateway.config import ListenConfig

    try:
        top = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"celgate: cannot read {path}: {exc}") from None
    listen = top.get("listen") if isinstance(top, dict) else None
    listen = listen if isinstance(listen, dict) else {}
    default = ListenConfig()
    host = _expand(listen.get("host", default.host), path, "listen.host")
    port = _expand(listen.get("port", default.port), path, "listen.port")
    host = _LOCAL_FOR.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def gateway_url(ns: argparse.Namespace) -> str:
    if ns.url:
        return str(ns.url).rstrip("/")
    if ns.config:
        return url_from_config(Path(ns.config))
    return os.environ.get("CELGATE_URL", DEFAULT_URL).rstrip("/")


class AdminClient:
    """One admin API, each answer checked to come from a celgate gateway."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            resp = httpx.request(
                method, self.url + path, headers=headers, json=body, timeout=TIMEOUT_SECONDS
            )
        except httpx.ConnectError:
            raise SystemExit(f"celgate: no gateway at {self.url} (nothing answers there)") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise SystemExit(f"celgate: {self.url!r} is no gateway URL: {exc}") from None
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            raise SystemExit(f"celgate: no answer from {self.url}: {why}") from None
        return self._read(resp, f"{method} {path}")

    def _read(self, resp: Any, what: str) -> Any:
        body = _json_or_none(resp)
        realm = ADMIN_REALM in resp.headers.get("www-authenticate", "")
        detail = body.get("detail") if isinstance(body, dict) else None
        if resp.status_code in (401, 403) and (realm or detail == _AGENT_KEY_REFUSED):
            raise SystemExit(
                f"celgate: the gateway at {self.url} refused the admin token "
                f"(HTTP {resp.status_code}: {detail}); "
                "is CELGATE_ADMIN_TOKEN the one of this gateway's admin.token_sha256?"
            )
        if isinstance(body, dict) and "jsonrpc" in body:  # a path under an MCP endpoint
            raise SystemExit(
                f"celgate: {self.url} is an MCP endpoint, not a gateway's base URL ({what} "
                f"answered HTTP {resp.status_code}); name the base (http://HOST:PORT) with "
                "--url, CELGATE_URL or --config"
            )
        if body is None or (resp.status_code == 404 and detail == "Not Found"):
            raise SystemExit(
                f"celgate: {self.url} is not a celgate gateway ({what} answered "
                f"HTTP {resp.status_code}); name one with --url, CELGATE_URL or --config"
            )
        if resp.status_code >= 400:
            raise SystemExit(f"celgate: {self.url}: HTTP {resp.status_code}: {detail or body}")
        return body


_AGENT_KEY_REFUSED = "agent keys cannot use the admin API"


def _json_or_none(resp: Any) -> Any:
    if "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _client(ns: argparse.Namespace) -> AdminClient:
    token = ns.token or os.environ.get("CELGATE_ADMIN_TOKEN")
    if not token:
        raise SystemExit("celgate: an admin token is needed (--token or CELGATE_ADMIN_TOKEN)")
    return AdminClient(gateway_url(ns), token)


#: What ``ApprovalService`` makes: ``apr_`` and URL-safe base64.
APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{1,64}")


def _approvals(ns: argparse.Namespace) -> int:
    admin = _client(ns)
    if ns.action == "list":
        return _list_approvals(admin, ns)
    if not ns.id:
        raise SystemExit(f"celgate: approvals {ns.action} needs an approval ID")
    if APPROVAL_ID.fullmatch(ns.id) is None:  # pasted from anywhere: never a path of its own
        shown = printable(ns.id[:80])
        raise SystemExit(f"celgate: {shown!r} is not an approval ID (apr_ then A-Z a-z 0-9 _ -)")
    body = {"by": ns.by, "note": ns.note}
    result = admin.call("POST", f"/admin/approvals/{ns.id}/{ns.action}", body)
    print(printable(f"{result['id']}: {result['status']} by {result['decided_by']}"))
    return 0


def _list_approvals(admin: AdminClient, ns: argparse.Namespace) -> int:
    items = admin.call("GET", "/admin/approvals" + ("" if ns.all else "?status=pending"))
    if ns.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no approval requests" if ns.all else "no pending approval requests")
    for r in items:  # agents name tools and give values: each shown escaped, on its own row
        target = f"{r['server']}/{r['tool']}"
        print(printable(f"{r['id']}  {r['status']:<8} {r['grant']} -> {target}  {r['reason']}"))
        print(f"    args: {_args_line(r.get('args'))}")
    return 0


ARGS_CHARS = 300  # of the arguments on one line; --json shows the whole stored copy


def _args_line(args: Any) -> str:
    # A value must not drive the operator's terminal, nor reorder what is shown (bidi
    # overrides), nor hide in characters that draw nothing: each of those is shown escaped.
    text = printable(json.dumps(args, ensure_ascii=False, separators=(", ", ": ")))
    if len(text) > ARGS_CHARS:
        return text[:ARGS_CHARS] + f"... ({len(text) - ARGS_CHARS} more characters; --json)"
    return text


def _limits(ns: argparse.Namespace) -> int:
    admin = _client(ns)
    if ns.action == "reset":
        if ns.grant == "" or ns.counter == "":
            raise SystemExit("celgate: --grant and --counter name something (or use --all)")
        if not (ns.grant or ns.counter or ns.all):
            raise SystemExit("celgate: limits reset needs --grant, --counter or --all")
        body = {"grant": ns.grant, "counter": ns.counter, "all": ns.all}
        result = admin.call("POST", "/admin/limits/reset", body)
        print(f"refilled {result['refilled']} bucket(s)")
        for key in result["keys"]:
            print(f"  {printable(key)}")  # a tool-scoped key holds an agent's tool name
        return 0
    query = "?" + urlencode({"grant": ns.grant}) if ns.grant else ""  # ci+bot, a&b=c
    rows = admin.call("GET", "/admin/limits" + query)
    if not rows:
        print("every bucket is full (no recent calls under a limit)")
    for row in rows:
        print(f"{printable(row['key'])}  remaining {row['remaining']}")
    return 0


def add_gateway_args(parser: argparse.ArgumentParser, *, inner: bool = False) -> None:
    """``--url``/``--config`` and ``--token``; ``inner``: on a subcommand, given there or
    before it (a subcommand's own default would overwrite what was given before it)."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if inner else {}
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url", help=f"the gateway's base URL (default: $CELGATE_URL, {DEFAULT_URL})", **extra
    )
    where.add_argument(
        "--config", help="reach the gateway at this config file's listen address", **extra
    )
    parser.add_argument("--token", help="admin token (default: $CELGATE_ADMIN_TOKEN)", **extra)


def _configure_approvals(parser: argparse.ArgumentParser) -> None:
    """``list``, ``approve ID``, ``deny ID``, each a subcommand of its own: with ``action``
    and ``id`` two positionals of one parser, an option between them (``approve --url U
    ID``) left the ID unread, an error (red-team wave 63)."""
    add_gateway_args(parser)
    parser.set_defaults(func=_approvals, id=None, by=None, note=None, all=False, json=False)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the pending requests (--all: decided too)")
    listing.add_argument("--all", action="store_true", help="list decided requests too")
    listing.add_argument("--json", action="store_true")
    add_gateway_args(listing, inner=True)
    for verb in ("approve", "deny"):
        deciding = actions.add_parser(verb, help=f"{verb} the request of this ID")
        deciding.add_argument("id", metavar="ID")
        deciding.add_argument("--by", default=os.environ.get("USER", "admin"))
        deciding.add_argument("--note")
        add_gateway_args(deciding, inner=True)


def _configure_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show", "reset"])
    parser.add_argument("--grant")
    parser.add_argument("--counter", help="reset: only this counter's buckets")
    parser.add_argument("--all", action="store_true", help="reset: every bucket")
    add_gateway_args(parser)
    parser.set_defaults(func=_limits)


PARSERS = {"approvals": _configure_approvals, "limits": _configure_limits}
