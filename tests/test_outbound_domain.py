"""The retry rule for calls to the channels: exponential, capped, one alert at the N-th try."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gasworks.domain.errors import InvariantViolated
from gasworks.domain.outbound import Backoff, JobKind, JobState, OutboundJob

AT = datetime(2026, 11, 23, tzinfo=UTC)


@given(first_s=st.integers(1, 3600), cap_factor=st.integers(1, 100), tries=st.integers(0, 10_000))
def test_the_delay_grows_never_beyond_the_cap(first_s, cap_factor, tries):
    backoff = Backoff(first_s=first_s, cap_s=first_s * cap_factor)
    assert first_s <= backoff.delay_s(tries) <= backoff.cap_s
    assert backoff.delay_s(tries) <= backoff.delay_s(tries + 1)


def test_the_alert_is_due_once_at_the_nth_try():
    job = OutboundJob.new(JobKind.REFUND, "pay_1", "wechat", AT)
    backoff = Backoff(first_s=60, cap_s=600, tries_before_alert=3)
    alerts = [job.tried("CHANNEL_ERROR", AT, backoff) for _ in range(6)]
    assert alerts == [False, False, True, False, False, False]
    assert job.state == JobState.WAITING and job.tries == 6 and not job.is_due(AT)


def test_a_backoff_without_bounds_is_refused():
    with pytest.raises(InvariantViolated):
        Backoff(first_s=0, cap_s=10)
    with pytest.raises(InvariantViolated):
        Backoff(first_s=100, cap_s=10)
