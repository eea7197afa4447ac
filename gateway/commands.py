"""Registry of CLI commands that live beside the parts they drive (run, keys, approvals...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import catalogcmd, opscmd, policytest, serve, trycmd

REGISTER: list[Callable[[Any], None]] = [
    serve.register,
    trycmd.register,
    opscmd.register,
    policytest.register,
    catalogcmd.register,
]
