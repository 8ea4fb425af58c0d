"""Each organization's rate limit: its deliveries are spaced ``1 / rate_limit_per_second``
apart, shared by every worker.

A job reserves the organization's next free slot (``slot = max(now, next_free)``, then
``next_free = slot + 1 / rate``: the virtual-scheduling form of a token bucket, GCRA). A slot
now is sent at once; a later one is put back on the queue to run at its slot, carrying the
reservation, so it is not reserved again. A backlog of N deliveries for one EHR is thus
enqueued once each, spread over N / rate seconds, rather than every job bouncing every
second. The slots live in ``REDIS_URL`` (one Lua script, atomic), or in the process with
the embedded ``memory://``.
"""

from __future__ import annotations

import threading
import time

import redis

# Keys expire once their slot has passed: an idle organization leaves nothing behind.
RESERVE = """
local now = tonumber(ARGV[1])
local step = tonumber(ARGV[2])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, free)
local ttl = math.ceil((slot + step - now) * 1000) + 1000
redis.call('SET', KEYS[1], tostring(slot + step), 'PX', ttl)
return tostring(slot)
"""
PREFIX = "caredeck-ehr:next-slot:"


class RateLimiter:
    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self._next: dict[int, float] = {}
        self._redis = None if url.startswith("memory:") else redis.Redis.from_url(url)
        self._reserve = self._redis.register_script(RESERVE) if self._redis else None

    def reserve(self, organization) -> float:
        """The organization's next free slot (a ``time.time()``), now taken for the caller."""
        now, step = time.time(), 1.0 / organization.rate_limit_per_second
        if self._reserve is not None:
            return float(self._reserve(keys=[f"{PREFIX}{organization.id}"], args=[now, step]))
        with self._lock:
            slot = max(now, self._next.get(organization.id, 0.0))
            self._next[organization.id] = slot + step
            return slot
