"""Policy core benchmark: compile (load_policy) and decide() times.

Sweeps a tool with 1, 10 and 100 rules (the matching rule is the last one, so every rule is
evaluated) and arguments of 1, 10 and 100 fields, plus a typical tool with 3 CEL rules (target:
median < 100 us). Policies and calls are prepared outside the timer; each timed decision is
checked. Writes ``benchmarks/results/policy.json``, prints a Markdown table and the top
functions of a cProfile run of the 3-rule case.

    python benchmarks/bench_policy.py [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.policy import Call, CompiledPolicy, Identity, ToolInfo, decide, load_policy

RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"
NOW = datetime(2026, 3, 14, 13, 30, tzinfo=UTC)

THREE_RULES = """\
default: deny
tools:
  execute_query:
    rules:
      - id: own-only
        when: 'has(args.owner) && args.owner != agent.id'
        action: deny
      - id: high-risk
        when: 'tool.risk == "high"'
        action: require_approval
      - id: read-only-sql
        when: 'args.sql.matches("(?i)^\\\\s*(select|with|show|explain)\\\\b")'
        action: allow
    limits:
      - {counter: q, window: minute, max: 60, scope: agent}
"""


def _rules_text(n_rules: int) -> str:
    lines = ["default: deny", "tools:", "  t:", "    rules:"]
    for i in range(n_rules - 1):
        lines.append(f"      - {{id: r{i}, when: 'args.f0 == \"miss{i}\"', action: deny}}")
    lines.append("      - {id: hit, when: 'args.f0 == \"hit\"', action: allow}")
    return "\n".join(lines) + "\n"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _measure(fn: Callable[[], None], iterations: int, budget_s: float = 3.0) -> dict[str, float]:
    """Run ``fn`` ``iterations`` times (fewer if that would exceed ``budget_s``), timing each."""
    warm = min(50, iterations)
    start = time.perf_counter()
    for _ in range(warm):
        fn()  # warm caches (regex, CEL runner) and estimate the cost
    per_call = (time.perf_counter() - start) / warm
    iterations = max(min(iterations, 100), min(iterations, int(budget_s / per_call)))
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {
        "median_us": statistics.median(samples),
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "iterations": iterations,
    }


def _decider(policy: CompiledPolicy, call: Call, expected: str, rule: str) -> Callable[[], None]:
    def run() -> None:
        d = decide(policy, call, NOW)
        if d.effect != expected or d.rule != rule:
            raise AssertionError(f"unexpected decision {d.to_dict()}")

    return run


def _compiler(path: Path, n_entries_rules: int) -> Callable[[], None]:
    def run() -> None:
        policy = load_policy([path])
        if len(policy.entries[0].rules) != n_entries_rules:
            raise AssertionError("policy did not load all rules")

    return run


def run_benchmarks(quick: bool) -> list[dict[str, Any]]:
    n_decide = 2_000 if quick else 10_000
    n_compile = 5 if quick else 30
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in (1, 10, 100):
            path = _write(folder, f"rules{n}.yaml", _rules_text(n))
            rows.append({"case": f"compile, {n} rules", **_measure(_compiler(path, n), n_compile)})
            policy = load_policy([path])
            call = Call(tool="t", args={"f0": "hit"})
            rows.append(
                {
                    "case": f"decide, {n} rules",
                    **_measure(_decider(policy, call, "allow", "hit"), n_decide),
                }
            )
        one = load_policy([_write(folder, "one.yaml", _rules_text(1))])
        for n in (1, 10, 100):
            args: dict[str, Any] = {"f0": "hit"} | {
                f"f{i}": {"v": i, "s": "x" * 8} for i in range(1, n)
            }
            call = Call(tool="t", args=args)
            rows.append(
                {
                    "case": f"decide, args of {n} fields",
                    **_measure(_decider(one, call, "allow", "hit"), n_decide),
                }
            )
        three_path = _write(folder, "three.yaml", THREE_RULES)
        rows.append(
            {"case": "compile, 3 CEL rules", **_measure(_compiler(three_path, 3), n_compile)}
        )
        three, call = _three_rule_call(three_path)
        rows.append(
            {
                "case": "decide, 3 CEL rules",
                **_measure(_decider(three, call, "allow", "read-only-sql"), n_decide),
            }
        )
    return rows


def _three_rule_call(path: Path) -> tuple[CompiledPolicy, Call]:
    call = Call(
        tool="execute_query",
        server="redshift",
        args={"sql": "SELECT id, total FROM sales WHERE day = '2026-03-14'", "owner": "bot"},
        identity=Identity(grant="key-1", agent="bot", roles=("analyst",)),
        session="s-1",
        info=ToolInfo(risk="medium", kind="read"),
    )
    return load_policy([path]), call


def profile_three_rules(top: int = 15) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        policy, call = _three_rule_call(_write(Path(tmp), "three.yaml", THREE_RULES))
        run = _decider(policy, call, "allow", "read-only-sql")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5_000):
            run()
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | median (µs) | p99 (µs) | runs |", "|---|---:|---:|---:|"]
    for row in rows:
        median, p99 = row["median_us"], row["p99_us"]
        lines.append(f"| {row['case']} | {median:.1f} | {p99:.1f} | {row['iterations']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--no-profile", action="store_true")
    ns = parser.parse_args(argv)
    rows = run_benchmarks(ns.quick)
    three = next(r for r in rows if r["case"] == "decide, 3 CEL rules")
    report = {
        "benchmark": "policy",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "engine": "cel-python (compiled runner)",
        "target_3_rules_median_us": 100,
        "meets_target": three["median_us"] < 100,
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    print(
        f"\n3 CEL rules: median {three['median_us']:.1f} µs (target < 100 µs): "
        f"{'met' if report['meets_target'] else 'NOT met'}; written to {RESULTS}"
    )
    if not ns.no_profile:
        print("\ncProfile of decide(), 3 CEL rules, 5000 calls, by own time:")
        print(profile_three_rules())
    return 0


if __name__ == "__main__":
    sys.exit(main())
