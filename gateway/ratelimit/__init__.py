"""Token-bucket rate limits, in process memory or shared through Valkey.

``make_limiter(url)`` picks the backend; both implement :class:`RateLimiter` identically
(the contract suite in ``tests/test_ratelimit_contract.py`` runs one body over both).
"""

from gateway.ratelimit.base import (
    Bucket,
    BucketState,
    FailureMode,
    LimitResult,
    RateLimiter,
    Scope,
)
from gateway.ratelimit.factory import make_limiter
from gateway.ratelimit.memory import MemoryRateLimiter
from gateway.ratelimit.valkey import ValkeyRateLimiter

__all__ = [
    "Bucket",
    "BucketState",
    "FailureMode",
    "LimitResult",
    "MemoryRateLimiter",
    "RateLimiter",
    "Scope",
    "ValkeyRateLimiter",
    "make_limiter",
]
