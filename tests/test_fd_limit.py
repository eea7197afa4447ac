"""``celgate run`` raises its soft descriptor limit for its clients *and* their upstream
connections: one client connection may hold one upstream connection per server (a ``/mcp``
listen), and ``max_connections`` plus 256 ran out (one agent's 256 listens on five servers
took every descriptor under a soft limit of 1,024; red-team wave 33)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from gateway.cli.run import FD_WANTED

CHILD = """
import json, resource, sys
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from gateway.cli.run import _raise_fd_limit
_raise_fd_limit(int(sys.argv[3]))
print(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))
"""


def limits_after(soft: int, hard: int, max_connections: int) -> tuple[list[int], str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(soft), str(hard), str(max_connections)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]), done.stdout


def test_the_soft_limit_is_raised_well_past_max_connections() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard descriptor limit here is {hard}")
    ceiling = FD_WANTED if hard == resource.RLIM_INFINITY else min(hard, FD_WANTED)
    (soft, _), said = limits_after(1024, hard, 1000)
    assert soft == ceiling and "WARNING" not in said


def test_a_hard_limit_below_what_is_needed_is_warned_of() -> None:
    (soft, hard), said = limits_after(512, 1024, 1000)
    assert (soft, hard) == (1024, 1024)
    assert "WARNING: security.max_connections is 1000" in said
