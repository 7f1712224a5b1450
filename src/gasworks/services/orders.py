"""Merchant orders: the resident picks account and amount before the wallet collects."""

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from gasworks.domain.errors import InvalidInput, NotFound, TooManyRequests, Unauthorized
from gasworks.domain.money import PaymentCeiling, check_payment_amount
from gasworks.domain.payments import OrderState, PaymentOrder
from gasworks.services.channels import require_channel
from gasworks.services.intake import payment_fen_max
from gasworks.services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class ResidentProof:
    """A resident who has bound the account in an app: the holder's name or phone, as registered."""

    name: str | None = None
    phone: str | None = None

    def matches(self, holder_name: str, holder_phone: str) -> bool:
        by_name = self.name is not None and self.name.strip() != "" and self.name.strip() == holder_name.strip()
        by_phone = self.phone is not None and _digits(self.phone) != "" and _digits(self.phone) == _digits(holder_phone)
        return by_name or by_phone


@dataclass(frozen=True)
class OrderRate:
    """At most `orders_max` orders per account in any `window_s` seconds."""

    orders_max: int = 10
    window_s: int = 600


def _digits(phone: str) -> str:
    digits = re.sub(r"[^0-9]", "", phone)
    return digits[2:] if digits.startswith("86") and len(digits) == 13 else digits  # +86 138…


def new_out_trade_no(uow: UnitOfWork) -> str:
    # WeChat Pay allows 6-32 characters of [A-Za-z0-9_-|*]; Alipay 64. 22 here, unguessable.
    return "GW" + uow.clock.now().strftime("%Y%m%d") + secrets.token_hex(6).upper()


def create_order(
    *, channel_id: str, account_no: str, amount_fen: int, ceiling: PaymentCeiling, uow: UnitOfWork,
    resident: ResidentProof | None = None, rate: OrderRate | None = None,
) -> PaymentOrder:  # fmt: skip
    """An order for a key-holding caller, or for a resident who proves the account is theirs (the
    entrypoint decides which). Above the ceiling: 422 AMOUNT_ABOVE_LIMIT; too many for one account
    in the window: 429 RATE_LIMITED."""
    with uow:
        if resident is not None:
            customer = uow.customers.get(account_no)
            if customer is None or not resident.matches(customer.name, customer.phone):  # one answer for both: no probing for accounts
                raise Unauthorized("account number and holder's name or phone do not match", code="RESIDENT_NOT_VERIFIED")
        channel = require_channel(uow, channel_id)
        if not channel.kind.uses_merchant_orders:
            raise InvalidInput(f"channel {channel_id} ({channel.kind.value}) does not take merchant orders", code="WRONG_CHANNEL_KIND")
        if not uow.customers.exists(account_no):
            raise NotFound(f"no account {account_no!r}", code="ACCOUNT_NOT_FOUND")
        check_payment_amount(amount_fen, payment_fen_max(uow, ceiling, channel_id, account_no))
        now = uow.clock.now()
        if rate is not None and uow.orders.count_created_since(account_no, now - timedelta(seconds=rate.window_s)) >= rate.orders_max:
            raise TooManyRequests(f"account {account_no} has had {rate.orders_max} orders in the last {rate.window_s} s; try later", code="RATE_LIMITED")
        order = PaymentOrder(
            out_trade_no=new_out_trade_no(uow),
            channel_id=channel_id,
            account_no=account_no,
            amount_fen=amount_fen,
            state=OrderState.OPEN,
            created_at=now,
        )
        uow.orders.add(order)
        uow.commit()
        return order


def get_order(out_trade_no: str, uow: UnitOfWork) -> PaymentOrder:
    with uow:
        order = uow.orders.get(out_trade_no)
        if order is None:
            raise NotFound(f"no order {out_trade_no!r}", code="ORDER_NOT_FOUND")
        return order
