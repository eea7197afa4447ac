"""The ``celgate`` command line: a table of commands, each imported only when it runs.

Every command lives in a module of this package that exposes ``PARSERS`` (command name to a
function adding its arguments and handler). The table below names the module and a one-line
summary, so ``celgate --help`` and ``celgate check`` import neither the web server, Valkey
nor the MCP SDK. The failures people meet at a terminal (Ctrl-C, a closed pipe) end quietly
with the usual exit codes, never with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway import __version__

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `cmd | head`


@dataclass(frozen=True, slots=True)
class Command:
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "run": Command("gateway.cli.run", "serve the gateway (no --config: the embedded demo)"),
    "try": Command("gateway.cli.trycmd", "list tools and make two calls through a gateway URL"),
    "check": Command("gateway.cli.policy", "load rule files and report every error"),
    "decide": Command("gateway.cli.policy", "decide one call offline and print the Decision"),
    "test": Command("gateway.cli.policy", "run policy tests (*_test.yaml) beside the rules"),
    "catalog": Command("gateway.cli.catalog", "list upstream tools with kind, risk and effect"),
    "pins": Command("gateway.cli.catalog", "tool definition pins"),
    "keys": Command("gateway.cli.keys", "agent keys"),
    "admin-token": Command("gateway.cli.keys", "make an admin token, or hash one"),
    "approvals": Command("gateway.cli.admin", "list, approve or deny held calls"),
    "limits": Command("gateway.cli.admin", "show or refill rate-limit buckets"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (top-level options take
    no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celgate", description="MCP policy gateway")
    parser.add_argument("--version", action="version", version=f"celgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.summary, description=command.summary)
        if name == chosen:
            module = importlib.import_module(command.module)
            configure: Configure = module.PARSERS[name]
            configure(sub_parser)
    return parser


def _dispatch(argv: Sequence[str]) -> int:
    parser = build_parser(argv)
    ns = parser.parse_args(argv)
    func: Handler | None = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code = func(ns)
    sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
