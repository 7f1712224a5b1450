"""Channel statements: what a channel says it collected on one day, line by line, in integer fen."""

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import NamedTuple

from gasworks.domain.errors import GasworksError


class StatementRefused(GasworksError):
    """A statement file we will not import, with the line and the reason. Nothing of it is imported."""

    code = "STATEMENT_REFUSED"
    http_status = 422

    def __init__(self, reason: str, *, line_no: int | None = None, code: str | None = None) -> None:
        where = f"line {line_no}: " if line_no is not None else ""
        super().__init__(where + reason, code=code)
        self.line_no = line_no


class LineStatus(StrEnum):
    PAID = "paid"
    REFUNDED = "refunded"


class StatementLine(NamedTuple):  # a tuple, not a dataclass: a statement can hold millions
    line_no: int
    channel_txn_id: str
    out_trade_no: str | None
    account_no: str | None
    amount_fen: int  # positive: collected; a refund line carries the refunded amount, positive, with status REFUNDED
    fee_fen: int
    status: LineStatus
    paid_at: datetime | None


@dataclass(frozen=True)
class Statement:
    format: str
    lines: tuple[StatementLine, ...]
    day: date | None = None  # when the file says which day it covers

    @property
    def paid_total_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines if line.status == LineStatus.PAID)

    @property
    def fee_total_fen(self) -> int:
        return sum(line.fee_fen for line in self.lines)


class DiscrepancyClass(StrEnum):
    MISSING_NOTIFICATION = "missing_notification"  # in the statement, never booked here
    UNKNOWN_PAYMENT = "unknown_payment"  # booked here, not in the statement
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"  # refunded at the channel, booked here
    DUPLICATE = "duplicate"  # one channel transaction listed twice
    FEE_MISMATCH = "fee_mismatch"
    NOT_DELIVERED = "not_delivered"  # booked, past its service level, not applied at the meter


class DiscrepancyState(StrEnum):
    OPEN = "open"  # held for an operator, with a proposed action
    REPAIRED = "repaired"  # repaired by the run itself (a missing notification booked from the statement)
    CARRIED_OVER = "carried_over"  # near midnight: looked for again in the next day's statement
    RESOLVED = "resolved"  # an operator decided
    SUPERSEDED = "superseded"  # a later run found it matched after all


# What an operator is offered for each class; every decision is a ledger transaction and an audit record.
PROPOSED_ACTIONS = {
    DiscrepancyClass.MISSING_NOTIFICATION: "booked from the statement through the exactly-once path; nothing to do",
    DiscrepancyClass.UNKNOWN_PAYMENT: "ask the channel; if it never collected the money, reverse the booking",
    DiscrepancyClass.AMOUNT_MISMATCH: "adjust the booking to the channel's amount, or ask the channel",
    DiscrepancyClass.STATUS_MISMATCH: "the channel refunded the resident: reverse the booking",
    DiscrepancyClass.DUPLICATE: "ask the channel: one transaction listed twice; gasworks booked it once",
    DiscrepancyClass.FEE_MISMATCH: "check the fee rate agreed with the channel",
    DiscrepancyClass.NOT_DELIVERED: "see the purchase's delivery state; reissue or call the resident",
}


@dataclass(frozen=True)
class StatementFile:
    id: int
    channel_id: str
    statement_date: date
    format: str
    sha256: str
    filename: str
    lines: int
    paid_total_fen: int
    fee_total_fen: int
    imported_at: datetime
    imported_by: str


@dataclass
class Discrepancy:
    """One difference a reconciliation run found, with what is proposed and, later, what was decided."""

    id: int | None
    run_id: int | None
    klass: DiscrepancyClass
    state: DiscrepancyState
    channel_id: str
    channel_txn_id: str | None
    payment_id: str | None
    statement_amount_fen: int | None
    gasworks_amount_fen: int | None
    detail: str
    proposed_action: str
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None
