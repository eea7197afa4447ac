"""The decision record against the decision itself, in one process (issue 19: the record must
cost no more than ``decide``).

    python benchmarks/bench_record.py [--n 20000]

For an allow-all policy and a CEL rule + two limits (``bench_relay.POLICIES``), times, in
interleaved rounds: ``decide()``; ``DecisionLog.record()`` with JSON logs configured (the
path ``celgate run --json-logs`` takes), the line encoded and written (to ``/dev/null``); the
sink's write of one line alone; and the digest of the arguments alone. Medians in µs;
writes ``results/record.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_relay import POLICIES
from gateway.policy import Call, Identity, decide, load_policy
from gateway.telemetry import audit

RESULTS = Path(__file__).resolve().parent / "results" / "record.json"


def timed(fn: Callable[[], Any], n: int) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples) / 1000


async def measure(n: int) -> list[dict[str, Any]]:
    """Inside a running loop, as in the gateway."""
    audit.configure_logging(json_logs=True)
    sink = audit._SINK
    assert sink is not None
    sink.stream = Path("/dev/null").open("wb")  # noqa: ASYNC230, SIM115 (before any timing)
    identity = Identity(agent="bench", grant="bench")
    now = datetime.now(UTC)
    rows = []
    for label, text in POLICIES.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "policy.yaml"
            path.write_text(text)
            policy = load_policy([path])
        call = Call(tool="echo", args={"text": "bench-1"}, server="up", identity=identity)
        decision = decide(policy, call, now)
        log = audit.DecisionLog()

        def record(log: audit.DecisionLog = log, call: Call = call, d: Any = decision) -> None:
            log.record(audit.new_decision_id(), call, d, 0.1)  # its line written too

        def write(sink: audit.LineSink = sink) -> None:
            sink.write(b'{"event":"policy.decision"}\n')

        parts: dict[str, Callable[[], Any]] = {
            "decide": lambda p=policy, c=call: decide(p, c, now),
            "record": record,
            "args_digest": lambda c=call: audit.args_digest(c.args),
            "sink write": write,
        }
        medians: dict[str, list[float]] = {k: [] for k in parts}
        for _ in range(5):  # interleaved rounds
            for name, fn in parts.items():
                medians[name].append(timed(fn, n // 5))
                await asyncio.sleep(0)
        row = {"policy": label, **{k: round(statistics.median(v), 2) for k, v in medians.items()}}
        row["record / decide"] = round(row["record"] / row["decide"], 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    ns = parser.parse_args()
    rows = asyncio.run(measure(ns.n))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "record", "rows": rows}, indent=2) + "\n")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
