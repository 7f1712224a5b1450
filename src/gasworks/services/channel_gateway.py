"""The channel gateway port: what gasworks asks a payment channel, as opposed to what it hears from one.

Every channel answers four questions (WeChat Pay v3, Alipay's open API, the wallet's own API):
was this order paid, refund this payment, where is that refund, and give me a day's statement.
Adapters live in `adapters/channels/gateways/`, one per channel kind; base URLs are configuration,
so tests and the demo point them at local protocol stubs that sign and verify as the channel does.

Answers are verified by the adapter (signature over the response) before they are returned; an
answer that cannot be verified is a `GatewayError`, never a guess.
"""

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Protocol

from gasworks.domain.channels import PaymentNotice


class OrderStatus(StrEnum):
    PAID = "paid"  # the channel took the money: book it through the exactly-once path
    NOT_PAID = "not_paid"  # still open at the channel: ask again later
    CLOSED = "closed"  # closed or expired unpaid: the order is closed and the resident's page says so
    REFUNDED = "refunded"  # paid and then refunded at the channel
    NOT_FOUND = "not_found"  # the channel has never heard of it


@dataclass(frozen=True)
class OrderAnswer:
    out_trade_no: str
    status: OrderStatus
    notice: PaymentNotice | None  # for PAID: the payment as a notification would carry it


class RefundState(StrEnum):
    PROCESSING = "processing"  # accepted by the channel, money not yet back
    SUCCESS = "success"  # the resident has the money: only now does the payment become refunded
    CLOSED = "closed"  # the channel closed the refund: money stays with us, the operator decides again
    ABNORMAL = "abnormal"  # the channel could not pay it back (e.g. the card was cancelled): operator action


@dataclass(frozen=True)
class RefundRequest:
    refund_no: str  # ours; the channel treats a repeat with the same number as the same refund
    out_trade_no: str
    channel_txn_id: str
    refund_fen: int
    total_fen: int
    reason: str


@dataclass(frozen=True)
class RefundAnswer:
    refund_no: str
    state: RefundState
    refund_fen: int
    channel_refund_id: str | None
    succeeded_at: datetime | None


@dataclass(frozen=True)
class FetchedStatement:
    channel_id: str
    day: date  # the business day, Beijing time
    filename: str
    content: bytes  # the statement as the channel's reader in adapters/statements expects it (decompressed)
    checked: str  # what vouches for it, e.g. "sha1 hash_value matched" or "downloaded over the signed API"


class GatewayError(Exception):
    """The channel did not answer usefully. `retryable` says whether asking again later can help."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class ChannelGateway(Protocol):
    channel_id: str

    def query_order(self, out_trade_no: str) -> OrderAnswer: ...

    def refund(self, request: RefundRequest) -> RefundAnswer:
        """Idempotent by `request.refund_no`: asking twice refunds once."""
        ...

    def refund_status(self, refund_no: str, *, out_trade_no: str | None = None) -> RefundAnswer:
        """`out_trade_no`: the order refunded, for channels that look refunds up by order (Alipay)."""
        ...

    def fetch_statement(self, day: date) -> FetchedStatement: ...
