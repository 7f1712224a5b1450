"""Asking a channel about orders it never notified: the active query every wallet integration needs.

WeChat Pay and Alipay both answer "was order X paid?" (WeChat Pay v3: GET
/v3/pay/transactions/out-trade-no/{out_trade_no}; Alipay: alipay.trade.query). An order still open
some minutes after it was created is asked about; a paid answer is booked through the very same
exactly-once path as a notification, so a notification arriving later books nothing more.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import structlog

from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import GasworksError
from gasworks.services.intake import AuditNote, accept_payment
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

QUERY_AFTER_S = 600  # give the notification ten minutes first
QUERY_WINDOW_S = 24 * 3600  # an order older than a day has expired at the channel


class OrderQuery(Protocol):
    def paid_notice(self, out_trade_no: str) -> PaymentNotice | None:
        """The channel's answer for one order: the payment as a notification would carry it, or None if unpaid."""
        ...


def recover_unnotified_orders(uow_factory: Callable[[], UnitOfWork], channel_id: str, query: OrderQuery, *, limit: int, actor: str = "order-query") -> int:
    """Book every order the channel says is paid but never notified. Returns how many were booked now."""
    with uow_factory() as uow:
        now = uow.clock.now()
        orders = uow.orders.open_between(channel_id, now - timedelta(seconds=QUERY_WINDOW_S), now - timedelta(seconds=QUERY_AFTER_S), limit)
    recovered = 0
    for order in orders:
        notice = query.paid_notice(order.out_trade_no)
        if notice is None or notice.channel_id != channel_id:
            continue
        audit = AuditNote(actor, "payment.recovered", {"channel_id": channel_id, "out_trade_no": order.out_trade_no, "channel_txn_id": notice.channel_txn_id})
        try:
            taken = accept_payment(notice, uow_factory(), audit=audit)
        except GasworksError as refused:  # one order the channel answers oddly must not stop the others
            log.warning("order_query_answer_refused", channel_id=channel_id, out_trade_no=order.out_trade_no, code=refused.code, reason=refused.message)
            continue
        if taken.duplicate:
            continue
        recovered += 1
        log.warning("payment_recovered_by_query", channel_id=channel_id, out_trade_no=order.out_trade_no, payment_id=taken.payment_id)
    return recovered
