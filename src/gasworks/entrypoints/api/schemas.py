"""Request and response bodies of the HTTP API. Money in integer fen, times in UTC RFC 3339."""

from datetime import datetime
from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from gasworks.domain.accounts import CustomerClass, MeterKind
from gasworks.domain.payments import Payment, PaymentOrder
from gasworks.services.accounts import AccountView
from gasworks.services.intake import Acceptance

# A database id in a path: bounded, so a huge number is a 422, not an overflow deep in the driver.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class Strict(BaseModel):
    """Unknown fields are refused; money fields take integers only."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenAccountIn(Strict):
    account_no: str = Field(pattern=r"^[0-9]{10,12}$", examples=["4301001234"])
    name: str = Field(min_length=1, max_length=100)
    address: str = Field(max_length=300)
    community: str = Field(max_length=100)
    grid: str = Field(max_length=50)
    phone: str = Field(min_length=3, max_length=20)
    meter_serial: str = Field(pattern=r"^[0-9]{14}$")
    meter_kind: MeterKind
    customer_class: CustomerClass = CustomerClass.RESIDENTIAL
    meter_model: str = Field("cjt188-sm4", pattern=r"^[A-Za-z0-9._-]{1,40}$", description="The meter's model profile (GET /v1/meter-models): cjt188-sm4 (default), cjt188-aes, carrier-plain, cjt188-money, or one added.")


class AccountOut(BaseModel):
    account_no: str
    name_masked: str
    phone_masked: str
    address: str
    community: str
    grid: str
    customer_class: str
    meter_serial: str
    meter_kind: str
    meter_status: str
    balance_fen: int

    @classmethod
    def of(cls, view: AccountView) -> "AccountOut":
        c = view.customer
        return cls(
            account_no=c.account_no,
            name_masked=c.masked_name,
            phone_masked=c.masked_phone,
            address=c.address,
            community=c.community,
            grid=c.grid,
            customer_class=c.customer_class.value,
            meter_serial=c.meter.serial,
            meter_kind=c.meter.kind.value,
            meter_status=c.meter.status.value,
            balance_fen=view.balance_fen,
        )


class ChannelAccountOut(BaseModel):
    """What a bill-payment channel may show the resident before collecting."""

    account_no: str
    name_masked: str
    balance_fen: int
    meter_kind: str

    @classmethod
    def of(cls, view: AccountView) -> "ChannelAccountOut":
        return cls(
            account_no=view.customer.account_no,
            name_masked=view.customer.masked_name,
            balance_fen=view.balance_fen,
            meter_kind=view.customer.meter.kind.value,
        )


# An amount in a request body: a 64-bit integer at most (a larger one is a 422, never an overflow);
# the payment ceiling (GASWORKS_PAYMENT_FEN_MAX) is checked after, with its own code.
AmountFen = Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]  # "50" or 50.0 is refused, not coerced


class CreateOrderIn(Strict):
    channel_id: str = Field(max_length=40)
    account_no: str = Field(pattern=r"^[0-9]{10,12}$")
    amount_fen: AmountFen
    holder_name: str | None = Field(None, min_length=1, max_length=100, description="without an API key: the account holder's name, as registered")
    holder_phone: str | None = Field(None, pattern=r"^\+?[0-9][0-9 -]{2,19}$", description="without an API key: the account holder's phone, as registered")


# The bill payment a wallet posts, read raw (the HMAC covers its exact bytes); documented here.
WALLET_PAYMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["txn_id", "account_no", "amount_fen"],
                    "properties": {
                        "txn_id": {"type": "string", "minLength": 1, "maxLength": 64},
                        "account_no": {"type": "string", "minLength": 1, "maxLength": 12},
                        "amount_fen": {"type": "integer", "minimum": 1, "description": "above the payment ceiling: 422 AMOUNT_ABOVE_LIMIT"},
                        "paid_at": {"type": "string", "format": "date-time"},
                    },
                }
            }
        },
    }
}


class OrderOut(BaseModel):
    out_trade_no: str
    channel_id: str
    account_no: str
    amount_fen: int
    state: str
    created_at: datetime
    payment_id: str | None

    @classmethod
    def of(cls, order: PaymentOrder) -> "OrderOut":
        return cls(**order.__dict__ | {"state": order.state.value})


class AcceptanceOut(BaseModel):
    payment_id: str
    status: str
    hold_reason: str | None
    amount_fen: int
    account_no: str | None
    duplicate: bool
    resident_url: str = Field(description="show the resident this, not 'success': where the money is on its way to gas")

    @classmethod
    def of(cls, acceptance: Acceptance, *, resident_url: str) -> "AcceptanceOut":
        return cls(
            payment_id=acceptance.payment_id,
            status=acceptance.state.value,
            hold_reason=acceptance.hold_reason.value if acceptance.hold_reason else None,
            amount_fen=acceptance.amount_fen,
            account_no=acceptance.account_no,
            duplicate=acceptance.duplicate,
            resident_url=resident_url,
        )


class DevicePaymentIn(Strict):
    txn_id: str = Field(min_length=1, max_length=64)
    account_no: str = Field(pattern=r"^[0-9]{10,12}$")
    amount_fen: AmountFen
    method: str = Field(pattern=r"^(cash|card|qr)$")
    paid_at: datetime | None = Field(None, description="when the device took the money (RFC 3339 with offset); reconciliation dates it by this")


class HoldDecisionIn(Strict):
    decision: str = Field(pattern="^(credit|refund)$")
    account_no: str | None = Field(None, pattern=r"^[0-9]{10,12}$", description="for credit: the account the money belongs to")
    reason: str = Field(min_length=1, max_length=200)


class RefundIn(Strict):
    kind: str = Field(pattern="^(confirmed|external)$", description="confirmed: the channel paid back a refund we requested; external: the channel refunded on its own")
    evidence: str = Field(min_length=1, max_length=200, description="where the refund was seen: the channel's refund id, notification or statement line")


class TimelineStep(BaseModel):
    state: str
    at: datetime
    note: str


class PaymentOut(BaseModel):
    id: str
    channel_id: str
    channel_txn_id: str
    amount_fen: int
    account_no: str | None
    out_trade_no: str | None
    method: str
    paid_at: datetime | None
    status: str
    hold_reason: str | None
    timeline: list[TimelineStep]

    @classmethod
    def of(cls, p: Payment) -> "PaymentOut":
        return cls(
            id=p.id,
            channel_id=p.channel_id,
            channel_txn_id=p.channel_txn_id,
            amount_fen=p.amount_fen,
            account_no=p.account_no,
            out_trade_no=p.out_trade_no,
            method=p.method,
            paid_at=p.paid_at,
            status=p.state.value,
            hold_reason=p.hold_reason.value if p.hold_reason else None,
            timeline=[TimelineStep(state=e.state.value, at=e.at, note=e.note) for e in p.events],
        )


class Finding(BaseModel):
    code: str
    subject: str
    detail: str


class LedgerCheckOut(BaseModel):
    ok: bool
    findings: list[Finding]
    totals_by_kind_fen: dict[str, int]
    payments_by_state: dict[str, dict[str, int]]
    arrears: dict[str, int] = Field(description="customers whose balance is below zero (a reversal after the gas was bought): accounts, fen owed")
