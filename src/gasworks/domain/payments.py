"""Payments, merchant orders and their state machines."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import pairwise

from gasworks.domain.errors import Conflict, InvariantViolated
from gasworks.domain.ledger import (
    REFUNDS,
    SUSPENSE,
    LedgerAccountKind,
    LedgerTransaction,
    TransactionKind,
    clearing_account,
    prepaid_account,
    transfer,
)


class IllegalTransition(Conflict):
    """A move the payment's life cycle does not have: deciding twice, refunding a reversal, ..."""

    code = "PAYMENT_TRANSITION_ILLEGAL"


class PaymentState(StrEnum):
    RECEIVED = "received"
    VERIFIED = "verified"
    BOOKED = "booked"  # on the customer's prepaid balance
    HELD = "held"  # in suspense, waiting for an operator: see `hold_reason`
    ADJUSTED = "adjusted"  # booked, then corrected to the channel's amount at reconciliation
    REVERSED = "reversed"  # the channel never collected it: the booking is taken back
    REFUND_REQUESTED = "refund_requested"  # an operator sent it back; the channel has not confirmed yet
    REFUNDED = "refunded"  # the channel confirmed the refund, or refunded on its own (external refund)


# Every legal move of a payment, and the one ledger transaction it posts (None: no money moves).
# This table is the payment's life cycle: `transition` refuses anything not in it, and
# `gasworks check` replays each payment's timeline through it to know which transactions it must own.
TRANSITIONS: dict[tuple[PaymentState, PaymentState], TransactionKind | None] = {
    (PaymentState.RECEIVED, PaymentState.VERIFIED): None,
    (PaymentState.VERIFIED, PaymentState.BOOKED): TransactionKind.PAYMENT_BOOKED,
    (PaymentState.VERIFIED, PaymentState.HELD): TransactionKind.PAYMENT_HELD,
    (PaymentState.HELD, PaymentState.BOOKED): TransactionKind.HOLD_RELEASED,
    (PaymentState.HELD, PaymentState.REFUND_REQUESTED): TransactionKind.REFUND_REQUESTED,
    (PaymentState.REFUND_REQUESTED, PaymentState.REFUNDED): TransactionKind.REFUND_CONFIRMED,
    (PaymentState.HELD, PaymentState.REVERSED): TransactionKind.PAYMENT_REVERSED,
    (PaymentState.BOOKED, PaymentState.REVERSED): TransactionKind.PAYMENT_REVERSED,
    (PaymentState.ADJUSTED, PaymentState.REVERSED): TransactionKind.PAYMENT_REVERSED,
    (PaymentState.BOOKED, PaymentState.ADJUSTED): TransactionKind.PAYMENT_ADJUSTED,
    (PaymentState.HELD, PaymentState.REFUNDED): TransactionKind.REFUND_EXTERNAL,
    (PaymentState.BOOKED, PaymentState.REFUNDED): TransactionKind.REFUND_EXTERNAL,
    (PaymentState.ADJUSTED, PaymentState.REFUNDED): TransactionKind.REFUND_EXTERNAL,
}

# Kinds a payment may own at most once each: the database says so too (a unique index on the
# transaction's payment and kind), so two operators deciding at once still move the money once.
ONCE_PER_PAYMENT = frozenset(kind for kind in TRANSITIONS.values() if kind is not None)


# Where a payment's money sits, by state, as a kind of ledger account (None: back with the channel).
MONEY_SITS_IN: dict[PaymentState, LedgerAccountKind | None] = {
    PaymentState.BOOKED: LedgerAccountKind.PREPAID,
    PaymentState.ADJUSTED: LedgerAccountKind.PREPAID,
    PaymentState.HELD: LedgerAccountKind.SUSPENSE,
    PaymentState.REFUND_REQUESTED: LedgerAccountKind.REFUNDS,
    PaymentState.REVERSED: None,
    PaymentState.REFUNDED: None,
}


def check_transition(current: PaymentState, new: PaymentState) -> TransactionKind | None:
    """The ledger transaction the move posts; IllegalTransition when the life cycle has no such move."""
    if (current, new) not in TRANSITIONS:
        raise IllegalTransition(f"a payment that is {current} cannot become {new}", code=_refusal_code(current, new))
    return TRANSITIONS[(current, new)]


def _refusal_code(current: PaymentState, new: PaymentState) -> str:
    if current == new or current in (PaymentState.REVERSED, PaymentState.REFUNDED, PaymentState.REFUND_REQUESTED):
        return f"PAYMENT_ALREADY_{current.name}"
    return "PAYMENT_TRANSITION_ILLEGAL"


def expected_ledger_kinds(states: list[PaymentState]) -> list[TransactionKind]:
    """The transactions a payment whose timeline went through `states` must own, in order."""
    kinds = []
    for current, new in pairwise(states):
        kind = TRANSITIONS.get((current, new))
        if (current, new) not in TRANSITIONS:
            raise IllegalTransition(f"timeline moves {current} -> {new}", code="PAYMENT_TRANSITION_ILLEGAL")
        if kind is not None:
            kinds.append(kind)
    return kinds


class HoldReason(StrEnum):
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    ORDER_ALREADY_PAID = "ORDER_ALREADY_PAID"  # a second, different transaction for one order
    CHANNEL_MISMATCH = "CHANNEL_MISMATCH"  # an order created for another channel
    AMOUNT_ABOVE_LIMIT = "AMOUNT_ABOVE_LIMIT"  # money already taken by the channel, above our ceiling


@dataclass(frozen=True)
class PaymentEvent:
    state: PaymentState
    at: datetime
    note: str = ""


@dataclass
class Payment:
    id: str
    channel_id: str
    channel_txn_id: str
    amount_fen: int
    account_no: str | None
    out_trade_no: str | None
    method: str
    paid_at: datetime | None
    state: PaymentState
    hold_reason: HoldReason | None = None
    events: list[PaymentEvent] = field(default_factory=list)

    @classmethod
    def received(
        cls,
        *,
        id: str,
        channel_id: str,
        channel_txn_id: str,
        amount_fen: int,
        account_no: str | None,
        out_trade_no: str | None,
        method: str,
        paid_at: datetime | None,
        at: datetime,
    ) -> "Payment":
        if not isinstance(amount_fen, int) or amount_fen <= 0:
            raise InvariantViolated(f"a payment is a positive integer number of fen: {amount_fen!r}")
        return cls(
            id=id,
            channel_id=channel_id,
            channel_txn_id=channel_txn_id,
            amount_fen=amount_fen,
            account_no=account_no,
            out_trade_no=out_trade_no,
            method=method,
            paid_at=paid_at,
            state=PaymentState.RECEIVED,
            events=[PaymentEvent(PaymentState.RECEIVED, at)],
        )

    def move_to(self, state: PaymentState, at: datetime, note: str = "") -> TransactionKind | None:
        """Moves the payment on; returns the kind of the one ledger transaction the move must post."""
        kind = check_transition(self.state, state)
        self.state = state
        self.events.append(PaymentEvent(state, at, note))
        return kind

    def last_event(self, state: PaymentState) -> PaymentEvent | None:
        return next((e for e in reversed(self.events) if e.state == state), None)

    @property
    def holding_account(self) -> str:
        """Where this payment's money sits in the ledger: the customer's balance once booked,
        suspense while held. Booking, reversing and adjusting all move money from or to here."""
        sits_in = MONEY_SITS_IN.get(self.state)
        if sits_in == LedgerAccountKind.PREPAID and self.account_no is not None:
            return prepaid_account(self.account_no)
        if sits_in == LedgerAccountKind.SUSPENSE:
            return SUSPENSE
        if sits_in == LedgerAccountKind.REFUNDS:
            return REFUNDS
        raise InvariantViolated(f"payment {self.id} is {self.state}: its money is not held anywhere")

    def settle(self, state: PaymentState, *, at: datetime, note: str, amount_fen: int, account_no: str | None = None) -> LedgerTransaction:
        """A decision about money already taken (credit a hold, refund, reverse, adjust, confirm a
        refund): moves the payment on and returns the one ledger transaction that moves its money.

        `amount_fen` is what the payment holds now (for an adjustment: the signed difference to the
        channel's amount); `account_no` is where a released hold goes.
        """
        source = self.holding_account
        if state == PaymentState.BOOKED:
            if account_no is None:
                raise InvariantViolated("a hold is credited to an account")
            self.account_no = account_no
        kind = self.move_to(state, at, note)
        if kind is None:
            raise InvariantViolated(f"{state} moves no money: not a settlement")
        clearing = clearing_account(self.channel_id)
        if kind == TransactionKind.PAYMENT_ADJUSTED:
            debit, credit = (clearing, source) if amount_fen > 0 else (source, clearing)
            amount_fen = abs(amount_fen)
        elif kind in (TransactionKind.HOLD_RELEASED, TransactionKind.REFUND_REQUESTED):
            debit, credit = source, self.holding_account
        else:  # the money goes back to the channel: reversed, refunded by the channel, refund confirmed
            debit, credit = source, clearing
        return transfer(kind, debit=debit, credit=credit, amount_fen=amount_fen, at=at, payment_id=self.id, memo=note[:300])

    def hold(self, reason: HoldReason, at: datetime, note: str) -> None:
        self.hold_reason = reason
        self.move_to(PaymentState.HELD, at, f"{reason}: {note}")


class OrderState(StrEnum):
    OPEN = "open"
    PAID = "paid"
    CLOSED = "closed"  # the channel closed it unpaid (asked by the worker): nothing was taken


@dataclass
class PaymentOrder:
    """A merchant order (out_trade_no) created before a wallet collects the money."""

    out_trade_no: str
    channel_id: str
    account_no: str
    amount_fen: int
    state: OrderState
    created_at: datetime
    payment_id: str | None = None
