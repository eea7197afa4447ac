"""Run every benchmark, one after the other, and write ``benchmarks/results/SUMMARY.md``.

    python benchmarks/run_all.py [--quick] [--skip e2e,limiter,...]

Sections: policy (compile and decide, rules and argument-size sweeps), CEL engines, limiter
(memory and Valkey), end to end (direct, celgate, FastMCP's proxy; 1, 8, 16 and 32 clients),
peers (celgate's paths beside FastMCP, mcp-policy-gateway and ContextForge, each peer in its
own venv), the Valkey client end to end.
Each section is its own process, so one's imports and event loop do not colour the next; each
writes its JSON to ``benchmarks/results/`` and its Markdown, captured here, to the summary.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMMARY = HERE / "results" / "SUMMARY.md"

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "policy": ("Policy: compile and decide", ["bench_policy.py", "--no-profile"]),
    "cel": ("CEL engines side by side", ["cel_engines.py"]),
    "limiter": ("Rate limiter: memory and Valkey", ["bench_limiter.py"]),
    "e2e": (
        "End to end: tools/call direct, through celgate, through FastMCP's proxy",
        ["bench_e2e.py", "--levels", "1,8,16,32"],
    ),
    "floor": (
        "What each layer under the relay costs: raw relay, bare relay, celgate",
        ["bench_floor.py"],
    ),
    "inproc": ("celgate's own work per call, in process", ["bench_inproc.py"]),
    "stages": ("What each stage of a relayed call costs, served", ["bench_stages.py"]),
    "peers": (
        "Side by side: celgate and the gateways users would pick instead (SDK client)",
        ["bench_peers.py"],
    ),
    "valkey-client": (
        "Valkey client end to end: limits in Valkey vs in memory",
        ["bench_valkey_client.py"],
    ),
}


def run_section(argv: list[str], quick: bool) -> str:
    cmd = [sys.executable, str(HERE / argv[0]), *argv[1:], *(["--quick"] if quick else [])]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = f"_{' '.join(['python', 'benchmarks/' + argv[0], *cmd[2:]])}: "
    took += f"{time.monotonic() - started:.0f} s, exit {done.returncode}_"
    if done.returncode != 0:
        return f"{took}\n\n```\n{done.stderr[-3000:]}\n```"
    return f"{took}\n\n{done.stdout.strip()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer iterations")
    parser.add_argument("--skip", default="", help=f"comma-separated, of {','.join(SECTIONS)}")
    ns = parser.parse_args()
    skip = set(filter(None, ns.skip.split(",")))
    parts = [
        "# celgate benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}, Python {platform.python_version()}, "
        f"{platform.machine()}. Absolute times drift on a shared machine: compare the ratios "
        "measured within one run.",
    ]
    failed = 0
    for key, (title, argv) in SECTIONS.items():
        if key in skip:
            continue
        print(f"== {title}", flush=True)
        body = run_section(argv, ns.quick)
        failed += ", exit 0_" not in body.splitlines()[0]
        print(body, flush=True)
        parts += ["", f"## {title}", "", body]
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"\nwrote {SUMMARY}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
