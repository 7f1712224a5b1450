"""Work gasworks does by calling a channel: ask about an order, get a refund paid, fetch a statement.

Each piece of work is one job, known by its kind and subject (an order's out_trade_no, a payment id,
"channel:day"), so a restarted worker picks up where the last one stopped: how often it was tried,
when to try next, and what the channel last said. Retries back off exponentially up to a cap and
never stop silently: after `tries_before_alert` failures an alert names the job.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from gasworks.domain.errors import InvariantViolated


class JobKind(StrEnum):
    ORDER_QUERY = "order_query"  # subject: out_trade_no
    REFUND = "refund"  # subject: payment id
    STATEMENT = "statement"  # subject: "<channel id>:<YYYY-MM-DD>"


class JobState(StrEnum):
    WAITING = "waiting"  # due again at next_try_at
    DONE = "done"  # the channel gave its final answer and gasworks acted on it
    GAVE_UP = "gave_up"  # a final answer a person must act on (an alert says which)


@dataclass(frozen=True)
class Backoff:
    """Delay before try n+1 after n failed ones: first_s, doubled each time, never above cap_s."""

    first_s: int = 60
    cap_s: int = 3600
    tries_before_alert: int = 6

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s or self.tries_before_alert < 1:
            raise InvariantViolated(f"backoff needs 0 < first_s <= cap_s and an alert after at least one try: {self}")

    def delay_s(self, tries: int) -> int:
        return int(min(self.cap_s, self.first_s * 2 ** min(max(tries - 1, 0), 30)))


@dataclass
class OutboundJob:
    kind: JobKind
    subject: str
    channel_id: str
    state: JobState
    tries: int
    next_try_at: datetime
    last_outcome: str = ""  # what the channel (or the network) said last, for people
    step: str = ""  # where a multi-step job stands, e.g. a refund "requested" at the channel

    @classmethod
    def new(cls, kind: JobKind, subject: str, channel_id: str, at: datetime) -> "OutboundJob":
        return cls(kind, subject, channel_id, JobState.WAITING, 0, at)

    def is_due(self, now: datetime) -> bool:
        return self.state == JobState.WAITING and self.next_try_at <= now

    def tried(self, outcome: str, at: datetime, backoff: Backoff) -> bool:
        """One more try that did not finish the job; True when this try is the one to alert about."""
        self.tries += 1
        self.last_outcome = outcome[:300]
        self.next_try_at = at + timedelta(seconds=backoff.delay_s(self.tries))
        return self.tries == backoff.tries_before_alert

    def finish(self, outcome: str, *, gave_up: bool = False) -> None:
        self.state = JobState.GAVE_UP if gave_up else JobState.DONE
        self.last_outcome = outcome[:300]
