"""Bytes from somewhere: the range-backend protocol, HTTP and local backends, coalescing, the I/O loop."""

from rasterduck.io.backend import (
    ConcurrencyLimiter,
    DefaultBackend,
    FetchStats,
    RangeBackend,
    s3_to_https,
)
from rasterduck.io.http import HttpBackend, HttpOptions
from rasterduck.io.local import LocalBackend
from rasterduck.io.loop import get_default_backend, get_loop, run_sync, set_default_backend, shutdown
from rasterduck.io.policy import AccessPolicy
from rasterduck.io.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SIZE, MergedRange, coalesce

__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_MAX_SIZE",
    "AccessPolicy",
    "ConcurrencyLimiter",
    "DefaultBackend",
    "FetchStats",
    "HttpBackend",
    "HttpOptions",
    "LocalBackend",
    "MergedRange",
    "RangeBackend",
    "coalesce",
    "get_default_backend",
    "get_loop",
    "run_sync",
    "s3_to_https",
    "set_default_backend",
    "shutdown",
]
