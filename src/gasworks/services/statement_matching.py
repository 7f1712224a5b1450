"""The port reconciliation reads and matches statements through; DuckDB implements it in adapters/statements.

Reading: the file's bytes become a checked table of lines that stays in the matcher (a million
lines are never a million Python objects) until the repository writes it out in bulk. Matching:
the day's statement lines, the channel's payments and the neighbouring days' transaction ids, each
a CSV file exported in bulk by the repositories, joined in one query; only the discrepancies come
back.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gasworks.domain.channels import Channel
from gasworks.domain.statements import Discrepancy, StatementLine

# The CSV headers the matcher reads; the repositories' exports write them.
LINES_HEADER = "channel_txn_id,out_trade_no,account_no,amount_fen,fee_fen,status,line_no"
PAYMENTS_HEADER = "payment_id,channel_txn_id,amount_fen,state,account_no,paid_at,command_id,command_state,route,ordered_at"
NEAR_HEADER = "channel_txn_id"


class ReadStatement(Protocol):
    """A statement file read whole and checked; its lines stay with the reader until written out."""

    format: str
    lines: int
    paid_total_fen: int
    fee_total_fen: int

    def lines_csv(self, file_id: int) -> Path:
        """Headerless CSV in statement_lines' column order, file_id first: for COPY."""
        ...

    def batches(self, batch_lines: int) -> Iterator[list[StatementLine]]: ...
    def __enter__(self) -> "ReadStatement": ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class MatchWindow:
    """What one day's match looks at, in UTC-aware times."""

    day_start: datetime
    day_end: datetime
    carry_from: datetime  # a payment from here to the day's end may be in the next day's file
    not_delivered_before: datetime  # a purchase ordered before this and not applied is overdue
    carried_txns: frozenset[str] = frozenset()  # looked for again today: carried over from earlier days


@dataclass
class Match:
    found: list[Discrepancy]
    matched: int  # statement transactions paid and booked for the same amount
    unnotified: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # txn -> (out_trade_no, account_no)


class StatementMatcher(Protocol):
    def read(self, format_: str, raw: bytes) -> ReadStatement:
        """The whole file, checked, or StatementRefused naming the line and the reason."""
        ...

    def match(self, lines_csv: Path, payments_csv: Path, near_csv: Path, *, channel: Channel, window: MatchWindow) -> Match: ...
