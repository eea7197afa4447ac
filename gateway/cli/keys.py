"""Secrets made at the terminal: ``keys new`` (an agent's key) and ``admin-token new|hash``.

A secret is printed once; the config holds only its sha256. The hash is of the exact
characters of the secret: ``echo tok | sha256sum`` hashes a newline too and never matches
(``printf %s tok | sha256sum`` does), so ``admin-token hash`` drops one trailing newline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys

import yaml

from gateway.auth.identity import OWN_PREFIXES

AGENT_PREFIX, ADMIN_PREFIX = OWN_PREFIXES


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str]:
    """A random secret (256 bits) and its sha256 digest."""
    secret = prefix + secrets.token_urlsafe(32)
    return secret, sha256_hex(secret)


def _keys_new(ns: argparse.Namespace) -> int:
    key, digest = new_secret(AGENT_PREFIX)
    print(f"key (shown once, give it to the agent): {key}")
    print("\nadd to the gateway config under `grants:`")
    print(f"  {_yaml_key(ns.grant)}:\n    key_sha256: {digest}")
    return 0


def _admin_token_new(ns: argparse.Namespace) -> int:
    token, digest = new_secret(ADMIN_PREFIX)
    if ns.env:  # `>> .env` takes the hash alone; the token is for the operators' shell
        print(
            "for your shell, shown once (never in the gateway's .env):\n"
            f"  export CELGATE_ADMIN_TOKEN={token}",
            file=sys.stderr,
        )
        print(f"CELGATE_ADMIN_TOKEN_SHA256={digest}")
        return 0
    print(f"admin token (shown once; operators export CELGATE_ADMIN_TOKEN): {token}")
    print("add to the gateway config:\nadmin:")
    print(f"  token_sha256: {digest}")
    return 0


def _admin_token_hash(ns: argparse.Namespace) -> int:
    token = ns.token if ns.token is not None else sys.stdin.read()
    token = token.removesuffix("\n").removesuffix("\r")
    if not token or token != token.strip():
        raise SystemExit("celgate: the token is empty or has spaces around it")
    print(f"token_sha256: {sha256_hex(token)}")
    return 0


def _configure_keys(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_action", required=True)
    new = sub.add_parser("new", help="print a new agent key once, and its config line")
    new.add_argument("--grant", required=True)
    new.set_defaults(func=_keys_new)


def _configure_admin_token(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_action", required=True)
    new = sub.add_parser("new", help="print a new admin token once, and its token_sha256 line")
    new.add_argument(
        "--env",
        action="store_true",
        help="print an export CELGATE_ADMIN_TOKEN= line for the shell and a _SHA256= line for .env",
    )
    new.set_defaults(func=_admin_token_new)
    digest = sub.add_parser("hash", help="print the token_sha256 line of an existing token")
    digest.add_argument("token", nargs="?", help="the token (default: read from stdin)")
    digest.set_defaults(func=_admin_token_hash)


PARSERS = {"keys": _configure_keys, "admin-token": _configure_admin_token}


def _yaml_key(name: str) -> str:
    """``name`` as a YAML mapping key: as it is when plain and YAML reads it back as that
    text, else quoted (JSON's quoting is YAML's): ``ops #1`` or ``team: a`` printed bare made
    config lines that do not parse, and ``yes``, ``null`` or ``123`` keys that are no text
    (the gateway refused them)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and yaml.safe_load(name) == name:
        return name
    return json.dumps(name)
