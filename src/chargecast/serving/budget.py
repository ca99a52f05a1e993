"""A memory budget per worker: every request pays, in bytes, for what it makes the worker hold.

Why a budget and not only size limits: a size limit bounds one request, but eight 16 MiB
uploads whose answers are never read, or thirty stalled 1 MiB bodies, each within their
limits, still got a worker OOM-killed. So each request holds a :class:`Lease` on its
worker's :class:`MemoryBudget` from the first body byte read until the last answer byte is
handed to the socket (the middleware releases it when the app returns), and pays:

- the body's bytes as they arrive (a drip-feeder holds only what it actually sent);
- what parsing and answering will cost, estimated *before* the work from the body's size and
  shape (:func:`json_cost`, :func:`answer_cost`, :func:`csv_cost`). The factors are measured
  peaks (tracemalloc) with a margin; ``tests/test_budget.py`` checks that each estimate
  stays above the measured peak for the worst shapes (non-ASCII text included).

A request that cannot pay gets 503 with Retry-After at once: waiting would keep what it
already holds. The budget is thread-safe because JSON and CSV work runs in worker threads.
"""

from __future__ import annotations

import threading
from typing import Final

from chargecast.schema import Issue
from chargecast.serving.errors import ApiError

# Measured peaks, with a margin (see tests/test_budget.py):
# - orjson's objects cost about one object and one pointer per JSON value: a list of empty
#   objects holds ~108 B per 3 B of text (36x), short strings ~119 B per value, a compact
#   record ~1.4 KB; so a JSON body is charged per value (its commas and colons bound the
#   count), plus 16x its bytes for long strings (one emoji makes Python hold a string at
#   4 bytes per character, and decoding it peaks at 16x), plus 128 KiB for nesting, which
#   orjson caps at 1024 levels;
JSON_PER_BYTE: Final = 16
JSON_PER_VALUE: Final = 128
JSON_FIXED: Final = 128 << 10
# - a urlencoded or multipart form (at most 64 fields) is decoded once and split: 8x its bytes;
FORM_FACTOR: Final = 8
# - each answered record: ~250 B of floats, dicts and JSON text; an explanation adds ~550 B;
#   each asked quantile ~85 B.
ANSWER_ROW: Final = 512
ANSWER_EXPLAIN: Final = 1024
ANSWER_LEVEL: Final = 128
# - a scored CSV keeps three float64 columns per row, and the chunk being validated and the
#   block being decoded (a fixed cost): 13-15 MiB for 240,000 rows, beyond the upload itself,
#   which is paid for as it arrives.
CSV_ROW: Final = 48
CSV_FIXED: Final = 8 << 20
RETRY_AFTER: Final = "2"


class MemoryBudget:
    """Bytes one worker may hold for requests at once; ``take`` refuses what does not fit."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self.total - self.used

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Lease:
    """What one request holds on the budget; ``release`` gives it all back (idempotent)."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, n: int, what: str = "request") -> None:
        """Hold ``n`` more bytes, or refuse the request with 503 (nothing is partly kept)."""
        if n <= 0:
            return
        if not self.budget.take(n):
            raise over_budget(what)
        self.held += n

    def fits(self, n: int, what: str = "request") -> None:
        """Refuse now, before anything is read, what could not be paid for right now."""
        if n > self.budget.free:
            raise over_budget(what)

    def release(self) -> None:
        if self.held:
            self.budget.give_back(self.held)
            self.held = 0


def over_budget(what: str) -> ApiError:
    return ApiError(
        503,
        f"the server is busy: this {what} does not fit in the memory left for requests right now; retry shortly",
        [Issue("body", "must fit in the worker's memory budget (CHARGECAST_WORKER_MEMORY_BUDGET)")],
        {"Retry-After": RETRY_AFTER, "Connection": "close"},
    )


def json_cost(body: bytes | bytearray) -> int:
    """What parsing this JSON body may hold, beyond the body itself (counted at memchr speed)."""
    values = body.count(b",") + body.count(b":") + 1
    return JSON_FIXED + len(body) * JSON_PER_BYTE + values * JSON_PER_VALUE


def form_cost(body: bytes | bytearray) -> int:
    """What decoding and splitting this form body may hold, beyond the body itself."""
    return len(body) * FORM_FACTOR


def answer_cost(rows: int, explain: bool, levels: int) -> int:
    """What predicting and serialising ``rows`` records with these options may hold."""
    return rows * (ANSWER_ROW + (ANSWER_EXPLAIN if explain else 0) + levels * ANSWER_LEVEL)


def csv_cost(rows_bound: int) -> int:
    """What validating, scoring and streaming a CSV of at most ``rows_bound`` rows may hold,
    beyond its upload (the text is parsed block by block, never decoded whole)."""
    return CSV_FIXED + rows_bound * CSV_ROW
