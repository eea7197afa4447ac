"""Token validation cost per call with a warm key set (gateway.auth), in process.

    python benchmarks/bench_tokens.py [--calls 2000] [--rounds 5]

Cases, each per algorithm (RS256, PS256, ES256, EdDSA):
* ``verify``: a token not seen before (signature, iss/aud/exp/nbf, claims to grant, the
  endpoint's audience and scopes); the key set is already loaded, so no network call;
* ``kept``: the same token again (a dict look-up, then the time, audience and scope checks);
* ``static key``: a configured key (sha256 and a look-up), for comparison.

Tokens are signed outside the timer; every answer is checked to be an Agent. The cases take
turns in rounds and the median per call is reported. Writes ``benchmarks/results/tokens.json``
and a Markdown table (``tokens.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.auth.agent import Agent  # noqa: E402
from gateway.auth.identity import Authenticator  # noqa: E402
from gateway.auth.settings import GrantConfig, OAuthConfig  # noqa: E402
from gateway.auth.tokens import TokenAuthority  # noqa: E402

ISSUER = "https://idp.example"
BASE = "https://gw.example"
PATH = "/mcp/up"
KEYS: dict[str, Any] = {
    "RS256": lambda: RSAKey.generate_key(2048, parameters={"kid": "rs", "alg": "RS256"}),
    "PS256": lambda: RSAKey.generate_key(2048, parameters={"kid": "ps", "alg": "PS256"}),
    "ES256": lambda: ECKey.generate_key("P-256", parameters={"kid": "es", "alg": "ES256"}),
    "EdDSA": lambda: OKPKey.generate_key("Ed25519", parameters={"kid": "ed", "alg": "EdDSA"}),
}


def authority(keys: list[Any]) -> TokenAuthority:
    config = OAuthConfig(
        resource=BASE,
        issuer=ISSUER,
        jwks_uri=f"{ISSUER}/jwks",
        algorithms=tuple(KEYS),
        scopes=("mcp",),
    )
    jwks = json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()

    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, jwks

    return TokenAuthority(config, ["up"], fetch)


def sign(key: Any, alg: str, n: int) -> list[str]:
    now = int(time.time())
    out = []
    for i in range(n):
        claims = {
            "iss": ISSUER,
            "aud": BASE + PATH,
            "sub": f"agent-{i % 7}",
            "exp": now + 3600,
            "iat": now,
            "scope": "mcp",
            "jti": str(i),
        }
        out.append(jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg]))
    return out


async def per_call(auth: TokenAuthority, tokens: list[str]) -> list[float]:
    times = []
    for token in tokens:
        started = time.perf_counter_ns()
        agent = await auth.authenticate(token, PATH)
        times.append((time.perf_counter_ns() - started) / 1000)
        assert isinstance(agent, Agent), agent
    return times


async def static_calls(n: int) -> list[float]:
    key = "cgk_bench-key"
    grant = GrantConfig("ops", hashlib.sha256(key.encode()).hexdigest(), "ops")
    auth = Authenticator.from_grants({"ops": grant}, anonymous=False)
    header = f"Bearer {key}"
    times = []
    for _ in range(n):
        started = time.perf_counter_ns()
        found = await auth.resolve(header, PATH)
        times.append((time.perf_counter_ns() - started) / 1000)
        assert isinstance(found, Agent)
    return times


async def run(calls: int, rounds: int) -> dict[str, list[float]]:
    keys = {alg: make() for alg, make in KEYS.items()}
    auth = authority(list(keys.values()))
    await auth.keys.refresh()  # warm: the key set is loaded before any timing
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for alg, key in keys.items():
            tokens = sign(key, alg, calls)  # outside the timer
            samples.setdefault(f"verify {alg}", []).extend(await per_call(auth, tokens))
            kept = [tokens[0]] * calls
            samples.setdefault(f"kept {alg}", []).extend(await per_call(auth, kept))
        samples.setdefault("static key", []).extend(await static_calls(calls))
    assert auth.keys.fetches == 1, "no fetch on the hot path"
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples = asyncio.run(run(args.calls, args.rounds))
    rows = {
        name: {"median_us": round(statistics.median(v), 2), "p90_us": round(_p90(v), 2)}
        for name, v in samples.items()
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "calls": args.calls, "rounds": args.rounds}
    (out / "tokens.json").write_text(json.dumps({"meta": meta, "cases": rows}, indent=2) + "\n")
    lines = ["| case | median µs | p90 µs |", "| --- | ---: | ---: |"]
    lines += [f"| {n} | {r['median_us']} | {r['p90_us']} |" for n, r in rows.items()]
    table = "\n".join(lines) + "\n"
    (out / "tokens.md").write_text(table)
    print(table)


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


if __name__ == "__main__":
    main()
