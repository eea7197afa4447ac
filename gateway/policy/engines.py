"""CEL engines by name, for the config's ``cel: {engine: ...}``."""

from __future__ import annotations

from gateway.policy.cel import DEFAULT_ENGINE, Engine

ENGINES = ("cel-python", "cel-google")


def get_engine(name: str) -> Engine:
    """The engine called ``name``; ImportError with the extra to install when it is missing."""
    if name == "cel-python":
        return DEFAULT_ENGINE
    if name == "cel-google":
        try:
            from gateway.policy.cel_google import CelGoogleEngine
        except ImportError as exc:
            raise ImportError("install it with: pip install 'celgate[cel-google]'") from exc
        return CelGoogleEngine()
    raise ValueError(f"unknown CEL engine {name!r} (use {' or '.join(ENGINES)})")
