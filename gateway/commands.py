"""Registry of CLI commands that live beside the parts they drive (run, keys, approvals...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import opscmd, serve, trycmd

REGISTER: list[Callable[[Any], None]] = [serve.register, trycmd.register, opscmd.register]
