"""Merchant orders: the resident picks account and amount before the wallet collects."""

import secrets

from gasworks.domain.errors import InvalidInput, NotFound
from gasworks.domain.money import check_payment_amount
from gasworks.domain.payments import OrderState, PaymentOrder
from gasworks.services.channels import require_channel
from gasworks.services.unit_of_work import UnitOfWork


def new_out_trade_no(uow: UnitOfWork) -> str:
    # WeChat Pay allows 6-32 characters of [A-Za-z0-9_-|*]; Alipay 64. 22 here, unguessable.
    return "GW" + uow.clock.now().strftime("%Y%m%d") + secrets.token_hex(6).upper()


def create_order(*, channel_id: str, account_no: str, amount_fen: int, payment_fen_max: int, uow: UnitOfWork) -> PaymentOrder:
    check_payment_amount(amount_fen, payment_fen_max)
    with uow:
        channel = require_channel(uow, channel_id)
        if not channel.kind.uses_merchant_orders:
            raise InvalidInput(f"channel {channel_id} ({channel.kind.value}) does not take merchant orders", code="WRONG_CHANNEL_KIND")
        if not uow.customers.exists(account_no):
            raise NotFound(f"no account {account_no!r}", code="ACCOUNT_NOT_FOUND")
        order = PaymentOrder(
            out_trade_no=new_out_trade_no(uow),
            channel_id=channel_id,
            account_no=account_no,
            amount_fen=amount_fen,
            state=OrderState.OPEN,
            created_at=uow.clock.now(),
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
