"""The resident's order page: /o/{out_trade_no}. What became of an order placed for WeChat Pay or
Alipay: still waiting for the channel, paid (→ the payment's own page), or closed unpaid at the
channel (services/outbound.py asked it), so nobody wonders whether money was taken."""

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gasworks.bootstrap import System
from gasworks.domain.errors import NotFound
from gasworks.domain.money import fen_to_yuan_text
from gasworks.domain.payments import OrderState
from gasworks.entrypoints.api.delivery_routes import resident_url
from gasworks.entrypoints.api.resident_page import _STYLE
from gasworks.services import orders
from gasworks.services.timeline import Text

_SAYS = {
    OrderState.OPEN: ("wait", Text("等待支付结果", "Waiting for the payment result"),
                      Text("若您已付款，结果通常在几分钟内到达；我们也会主动向支付渠道查询。", "If you paid, the result usually arrives within minutes; we also ask the payment channel ourselves.")),
    OrderState.CLOSED: ("bad", Text("订单已关闭，未扣款", "Order closed: no money was taken"),
                        Text("支付渠道已关闭此订单，没有扣款。如需购气，请重新下单。", "The payment channel closed this order unpaid; no money was taken. To buy gas, please place a new order.")),
}  # fmt: skip


def order_page_routes(system: System) -> APIRouter:
    router = APIRouter()

    @router.get("/o/{out_trade_no}", response_class=HTMLResponse, include_in_schema=False)
    def order_page(request: Request, out_trade_no: str = Path(max_length=64)) -> Response:
        try:
            order = orders.get_order(out_trade_no, system.new_uow())
        except NotFound:
            return HTMLResponse("<!doctype html><meta charset='utf-8'><p>没有这个订单 · No such order</p>", status_code=404)
        if order.state == OrderState.PAID and order.payment_id:
            return RedirectResponse(resident_url(system, request, order.payment_id), status_code=303)
        tone, headline, detail = _SAYS.get(order.state, _SAYS[OrderState.OPEN])
        masked = order.account_no[:4] + "****" + order.account_no[-2:]
        html = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex"><title>订单 · Order</title><style>{_STYLE}</style></head>
<body><main><section class="card"><div class="amount">¥{fen_to_yuan_text(order.amount_fen)}</div>
<div class="{tone}" data-state="{order.state.value}"><h1>{headline.zh}</h1><p class='en' lang='en'>{headline.en}</p></div>
<p>{detail.zh}</p><p class='en' lang='en'>{detail.en}</p>
<p class="time">户号 Account {masked} · {order.channel_id}</p></section></main></body></html>"""
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return router
