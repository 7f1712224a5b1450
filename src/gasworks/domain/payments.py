"""Payments, merchant orders and their state machines."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gasworks.domain.errors import InvariantViolated
from gasworks.domain.ledger import SUSPENSE, prepaid_account


class PaymentState(StrEnum):
    RECEIVED = "received"
    VERIFIED = "verified"
    BOOKED = "booked"  # on the customer's prepaid balance
    HELD = "held"  # in suspense, waiting for an operator: see `hold_reason`
    REFUNDED = "refunded"  # a hold an operator sent back to the resident through the channel


_LEGAL = {
    PaymentState.RECEIVED: {PaymentState.VERIFIED},
    PaymentState.VERIFIED: {PaymentState.BOOKED, PaymentState.HELD},
    PaymentState.BOOKED: set(),
    PaymentState.HELD: {PaymentState.BOOKED, PaymentState.REFUNDED},  # an operator's decision
    PaymentState.REFUNDED: set(),
}


def check_transition(current: PaymentState, new: PaymentState) -> None:
    if new not in _LEGAL[current]:
        raise InvariantViolated(f"illegal payment transition {current} -> {new}")


class HoldReason(StrEnum):
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    ORDER_ALREADY_PAID = "ORDER_ALREADY_PAID"  # a second, different transaction for one order
    CHANNEL_MISMATCH = "CHANNEL_MISMATCH"  # an order created for another channel
    AMOUNT_ABOVE_LIMIT = "AMOUNT_ABOVE_LIMIT"  # money already taken, above the payment ceiling


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

    def move_to(self, state: PaymentState, at: datetime, note: str = "") -> None:
        check_transition(self.state, state)
        self.state = state
        self.events.append(PaymentEvent(state, at, note))

    @property
    def holding_account(self) -> str:
        """Where this payment's money sits in the ledger: the customer's balance once booked,
        suspense while held. Booking, reversing and adjusting all move money from or to here."""
        if self.state == PaymentState.BOOKED and self.account_no is not None:
            return prepaid_account(self.account_no)
        if self.state == PaymentState.HELD:
            return SUSPENSE
        raise InvariantViolated(f"payment {self.id} is {self.state}: its money is not held anywhere")

    def hold(self, reason: HoldReason, at: datetime, note: str) -> None:
        self.hold_reason = reason
        self.move_to(PaymentState.HELD, at, f"{reason}: {note}")


class OrderState(StrEnum):
    OPEN = "open"
    PAID = "paid"


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
