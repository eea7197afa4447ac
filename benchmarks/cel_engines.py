"""CEL engines side by side on the same expressions: compile and evaluate times, and whether
they agree.

    python benchmarks/cel_engines.py [--quick]

Engines: cel-python (the default, compiled runner), Google's cel-expr-python (the
``cel-google`` extra, ``gateway/policy/cel_google.py``) and the Rust-backed
``common-expression-language`` (raw, not wired into celgate: it counts string ``size()`` in
bytes, against the CEL spec). Each engine gets the same activation, converted once outside the
timer as celgate's ``decide`` does; every timed result is checked against the expected value.
Also times a whole ``decide()`` with the 3-rule policy of ``bench_policy.py`` on each celgate
engine. Writes ``benchmarks/results/cel_engines.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.policy import Call, Identity, ToolInfo, decide, load_policy  # noqa: E402
from gateway.policy.cel import CelPythonEngine, Engine  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_policy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cel_engines.json"
NOW = datetime(2026, 3, 14, 13, 30, tzinfo=UTC)
SQL = "SELECT id, total FROM sales WHERE day = '2026-03-14'"

#: (name, expression, expected result) over the activation below.
EXPRESSIONS: list[tuple[str, str, bool]] = [
    ("string equality", 'tool.risk == "high"', False),
    ("regex", 'args.sql.matches("(?i)^\\\\s*(select|with|show|explain)\\\\b")', True),
    ("has + compare", "has(args.owner) && args.owner != agent.id", False),
    ("list membership", '"analyst" in agent.roles && agent.attrs.team == "finance"', True),
    ("size (unicode)", "size(args.note) == 5", True),
    ("comprehension", "args.rows.all(r, r.n < 100)", True),
    ("timestamp", 'now > timestamp("2026-01-01T00:00:00Z") && now.getHours() < 18', True),
    ("arithmetic", "args.limit * 2 + 1 < 1000", True),
]

ACTIVATION: dict[str, Any] = {
    "tool": {"name": "execute_query", "server": "redshift", "risk": "medium", "kind": "read"},
    "args": {
        "sql": SQL,
        "owner": "bot",
        "note": "héllo",
        "limit": 100,
        "rows": [{"n": i} for i in range(20)],
    },
    "agent": {"id": "bot", "grant": "key-1", "roles": ["analyst"], "attrs": {"team": "finance"}},
    "session": {"id": "s-1"},
    "request": {"time": NOW.isoformat(), "ip": "127.0.0.1"},
}


def engines() -> dict[str, Engine]:
    out: dict[str, Engine] = {"cel-python": CelPythonEngine()}
    try:
        from gateway.policy.cel_google import CelGoogleEngine
    except ImportError:
        return out
    out["cel-google"] = CelGoogleEngine()
    return out


def _median_us(fn: Callable[[], Any], n: int) -> float:
    for _ in range(min(n, 100)):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _checked(fn: Callable[[], Any], expected: bool) -> Callable[[], None]:
    def run() -> None:
        got = fn()
        if got is not expected:
            raise AssertionError(f"expected {expected}, got {got!r}")

    return run


def gateway_engine_row(engine: Engine, expr: str, expected: bool, n: int) -> dict[str, Any]:
    activation = {k: engine.convert(v) for k, v in ACTIVATION.items()}
    activation["now"] = engine.timestamp(NOW)
    try:
        program = engine.compile(expr)
        got = program.evaluate(activation)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:160]}
    if got is not expected:
        return {"disagrees": got}
    return {
        "compile_us": _median_us(lambda: engine.compile(expr), max(n // 50, 20)),
        "eval_us": _median_us(_checked(lambda: program.evaluate(activation), expected), n),
    }


def rust_row(expr: str, expected: bool, n: int) -> dict[str, Any]:
    try:
        import cel
    except ImportError:
        return {"error": "common-expression-language not installed"}
    context = dict(ACTIVATION, now=NOW)
    try:
        program = cel.compile(expr)
        got = program.execute(context)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:160]}
    if got is not expected:
        return {"disagrees": got}
    ctx = cel.Context(variables=context)  # converted once, like celgate's activation
    return {
        "compile_us": _median_us(lambda: cel.compile(expr), max(n // 50, 20)),
        "eval_us": _median_us(_checked(lambda: program.execute(ctx), expected), n),
    }


# The same typical tool as bench_policy.py, so the two figures compare.
THREE_RULES = bench_policy.THREE_RULES


def decide_row(engine: Engine, n: int) -> float:
    """Median µs of a whole decide() (activation built and converted per call)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "three.yaml"
        path.write_text(THREE_RULES, encoding="utf-8")
        policy = load_policy([path], engine=engine)
    call = Call(
        tool="execute_query",
        server="redshift",
        args={"sql": SQL, "owner": "bot"},
        identity=Identity(grant="key-1", agent="bot", roles=("analyst",)),
        info=ToolInfo(risk="medium", kind="read"),
    )

    def run() -> None:
        d = decide(policy, call, NOW, engine=engine)
        if d.rule != "read-only-sql":
            raise AssertionError(d.to_dict())

    return _median_us(run, n)


def run(quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 20_000
    found = engines()
    rows = []
    for label, expr, expected in EXPRESSIONS:
        row: dict[str, Any] = {"case": label, "expression": expr}
        for name, engine in found.items():
            row[name] = gateway_engine_row(engine, expr, expected, n)
        row["cel-rust (raw)"] = rust_row(expr, expected, n)
        rows.append(row)
    decide_us = {name: round(decide_row(engine, n), 1) for name, engine in found.items()}
    return {
        "benchmark": "cel_engines",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "engines": [*found, "cel-rust (raw)"],
        "rows": rows,
        "decide_3_rules_median_us": decide_us,
    }


def _cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return "error"
    if "disagrees" in result:
        return f"**wrong: {result['disagrees']!r}**"
    return f"{result['eval_us']:.1f} / {result['compile_us']:.0f}"


def markdown(report: dict[str, Any]) -> str:
    names = report["engines"]
    lines = [
        "eval µs / compile µs (median); **wrong** = disagrees with the CEL spec",
        "",
        "| case | " + " | ".join(names) + " | cel-python ÷ fastest |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for row in report["rows"]:
        evals = [row[n]["eval_us"] for n in names if "eval_us" in row[n]]
        base = row["cel-python"].get("eval_us")
        ratio = f"{base / min(evals):.1f}" if base and evals else ""
        lines.append(
            f"| {row['case']} | " + " | ".join(_cell(row[n]) for n in names) + f" | {ratio} |"
        )
    lines.append("")
    lines.append(f"decide(), 3 CEL rules, median µs: {report['decide_3_rules_median_us']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the evaluations")
    ns = parser.parse_args()
    report = run(ns.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
