"""A use case cut off by its database is run again through its own idempotent path.

When the primary dies mid-commit (a failover, a dropped connection) nobody knows whether the
commit happened. Booking is idempotent by (channel, channel transaction id), so running the same
use case again either books it now or finds it booked and answers as a duplicate: never twice.
Only when the bound is spent does the caller answer "try again later" (503), and the channel's
own retry takes the same path."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CutRetry:
    attempts: int  # runs in all, the first included
    first_backoff_s: float  # doubled after each cut, up to backoff_s_max
    is_cut_off: Callable[[BaseException], bool]  # the adapter's word for "the database went away"
    backoff_s_max: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def run(self, use_case: Callable[[bool], T]) -> T:
        """`use_case(after_cut)`: after_cut is True on a run after a cut, when the first run's
        commit may already have happened (its nonce, say, already claimed)."""
        for attempt in range(1, self.attempts + 1):
            try:
                return use_case(attempt > 1)
            except Exception as error:
                if attempt >= self.attempts or not self.is_cut_off(error):
                    raise
                pause_s = min(self.first_backoff_s * 2 ** (attempt - 1), self.backoff_s_max)
                log.warning("use_case_cut_off_retrying", attempt=attempt, error=type(error).__name__, pause_s=pause_s)
                self.sleep(pause_s)
        raise AssertionError("attempts is at least 1")


NO_RETRY = CutRetry(attempts=1, first_backoff_s=0.0, is_cut_off=lambda _error: False)
