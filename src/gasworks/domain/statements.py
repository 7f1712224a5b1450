"""Channel statements: what a channel says it collected on one day, line by line, in integer fen."""

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

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


@dataclass(frozen=True)
class StatementLine:
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
