"""The double-entry ledger, in integer fen.

Sign convention: an entry's `amount_fen` is positive for a debit and negative for a credit, so a
balanced transaction sums to zero. Ledger accounts:

- ``clearing:<channel>``  asset: what a channel has collected for us and owes us (debit-normal);
- ``prepaid:<account_no>`` liability: a customer's prepaid balance (credit-normal);
- ``suspense``             liability: money we hold but cannot place yet (credit-normal);
- ``delivery``             liability: gas bought and not yet applied at the meter (credit-normal);
                           its balance equals the cost of every credit order still on its way;
- ``revenue``              gas the meter has applied: sold;
- ``refunds``              liability: refunds requested and not yet confirmed by the channel
                           (refunds in flight, credit-normal); the confirmation moves the money on
                           to the channel's clearing account.

Entries are never updated or deleted; a correction is a new transaction.
"""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gasworks.domain.errors import InvariantViolated

SUSPENSE = "suspense"
DELIVERY = "delivery"
REVENUE = "revenue"
REFUNDS = "refunds"
FIXED_ACCOUNTS = (SUSPENSE, DELIVERY, REVENUE, REFUNDS)


class LedgerAccountKind(StrEnum):
    CLEARING = "clearing"
    PREPAID = "prepaid"
    SUSPENSE = "suspense"
    DELIVERY = "delivery"
    REVENUE = "revenue"
    REFUNDS = "refunds"


# Balances kept as a running sum beside the entries, for reading a customer's balance in O(1).
CACHED_BALANCE_KINDS = frozenset({LedgerAccountKind.PREPAID})

# Credit-normal accounts show their balance as the negated sum of their entries.
CREDIT_NORMAL = {
    LedgerAccountKind.PREPAID, LedgerAccountKind.SUSPENSE, LedgerAccountKind.DELIVERY, LedgerAccountKind.REVENUE, LedgerAccountKind.REFUNDS,
}  # fmt: skip


def clearing_account(channel_id: str) -> str:
    return f"clearing:{channel_id}"


def prepaid_account(account_no: str) -> str:
    return f"prepaid:{account_no}"


def kind_of(account_code: str) -> LedgerAccountKind:
    return LedgerAccountKind(account_code.split(":", 1)[0])


def presented_balance_fen(account_code: str, entries_sum_fen: int) -> int:
    """The balance as people read it: a customer with ¥50 prepaid shows +5000, not -5000."""
    return -entries_sum_fen if kind_of(account_code) in CREDIT_NORMAL else entries_sum_fen


class TransactionKind(StrEnum):
    PAYMENT_BOOKED = "payment_booked"
    PAYMENT_HELD = "payment_held"
    PURCHASE = "purchase"  # prepaid balance -> delivery: money turned into gas for the meter
    GAS_APPLIED = "gas_applied"  # delivery -> revenue: the meter applied it
    HOLD_RELEASED = "hold_released"  # suspense -> a customer's balance, by an operator
    PAYMENT_REVERSED = "payment_reversed"  # reconciliation: the channel never collected it
    PAYMENT_ADJUSTED = "payment_adjusted"  # reconciliation: booked to the channel's amount
    REFUND_REQUESTED = "refund_requested"  # suspense -> refunds in flight, by an operator
    REFUND_CONFIRMED = "refund_confirmed"  # refunds in flight -> clearing: the channel paid it back
    REFUND_EXTERNAL = "refund_external"  # balance or suspense -> clearing: the channel refunded on its own


@dataclass(frozen=True)
class Entry:
    account_code: str
    amount_fen: int  # + debit, - credit


@dataclass(frozen=True)
class LedgerTransaction:
    kind: TransactionKind
    entries: tuple[Entry, ...]
    at: datetime
    payment_id: str | None = None
    memo: str = ""
    id: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_balanced(self.entries)


@dataclass(frozen=True)
class LedgerCheckFinding:
    """One way the books are wrong, naming what is wrong (a transaction, an account, a payment)."""

    code: str
    subject: str
    detail: str


def check_balanced(entries: tuple[Entry, ...] | list[Entry]) -> None:
    if len(entries) < 2:
        raise InvariantViolated(f"a transaction needs at least two entries, got {len(entries)}")
    for entry in entries:
        if not isinstance(entry.amount_fen, int) or isinstance(entry.amount_fen, bool):
            raise InvariantViolated(f"entry amount must be integer fen: {entry!r}")
        if entry.amount_fen == 0:
            raise InvariantViolated(f"zero entry: {entry!r}")
    total = sum(e.amount_fen for e in entries)
    if total != 0:
        raise InvariantViolated(f"transaction does not balance: sum of entries is {total} fen")


def transfer(
    kind: TransactionKind,
    *,
    debit: str,
    credit: str,
    amount_fen: int,
    at: datetime,
    payment_id: str | None = None,
    memo: str = "",
) -> LedgerTransaction:
    if amount_fen <= 0:
        raise InvariantViolated(f"a transfer moves a positive amount, got {amount_fen} fen")
    return LedgerTransaction(
        kind=kind,
        entries=(Entry(debit, amount_fen), Entry(credit, -amount_fen)),
        at=at,
        payment_id=payment_id,
        memo=memo,
    )
