"""The resident's truth: one timeline per payment, from paid to gas available, with the next step.

It never says "gas available" before the meter (or the card coming back from the meter) has
applied the purchase. Every text is in Chinese first, then English, and every time in it is local
time (settings.local_timezone): a resident in Hunan reads Beijing time, never UTC.
"""

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import SAFETY_REASONS, CommandState, LinkState, MeterCommand, MeterLink, ValveReason
from gasworks.domain.errors import NotFound
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.meter_messages import Alarm
from gasworks.domain.money import fen_to_yuan_text
from gasworks.domain.payments import Payment, PaymentState
from gasworks.services.kiosks import nearest_working
from gasworks.services.unit_of_work import UnitOfWork

RESIDENT_LINK_SECRET = "resident_links"


class Status:
    HELD = "HELD"
    REFUND_REQUESTED = "REFUND_REQUESTED"
    REFUNDED = "REFUNDED"
    REVERSED = "REVERSED"
    ARREARS = "ARREARS"
    VALVE_CLOSED = "VALVE_CLOSED"
    ON_BALANCE = "ON_BALANCE"
    WAITING_FOR_METER = "WAITING_FOR_METER"
    SENT_TO_METER = "SENT_TO_METER"
    WAITING_FOR_CARD = "WAITING_FOR_CARD"
    CARD_WRITTEN = "CARD_WRITTEN"
    GAS_AVAILABLE = "GAS_AVAILABLE"
    CLOSED_FOR_SAFETY = "CLOSED_FOR_SAFETY"
    STUCK = "STUCK"


SAFETY_ALARMS = Alarm.LEAK | Alarm.TAMPER | Alarm.MAGNETIC_ATTACK


def closed_for_safety(meter: MeterLink | None) -> bool:
    """A leak, tampering or a hazard stop: gas is off until a technician has been, whatever was paid."""
    return meter is not None and bool(meter.valve_reasons & SAFETY_REASONS or Alarm(meter.alarms) & SAFETY_ALARMS)


@dataclass(frozen=True)
class Text:
    zh: str
    en: str


@dataclass(frozen=True)
class Step:
    key: str
    title: Text
    at: datetime | None
    done: bool


@dataclass(frozen=True)
class NearbyKiosk:
    kiosk: Kiosk
    distance_m: int | None

    @property
    def map_url(self) -> str:
        """An OpenStreetMap link centred on the kiosk: opens in any phone's browser or map app."""
        lat, lon = f"{self.kiosk.latitude:.6f}", f"{self.kiosk.longitude:.6f}"
        return f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=18/{lat}/{lon}"

    @property
    def geo_uri(self) -> str:
        """RFC 5870 geo: URI, which phones hand to their own map app."""
        return f"geo:{self.kiosk.latitude:.6f},{self.kiosk.longitude:.6f}"


def local_time_text(at: datetime, tz: tzinfo) -> str:
    return f"{at.astimezone(tz):%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class Timeline:
    payment: Payment
    status: str
    headline: Text
    next_step: Text | None
    steps: list[Step]
    order: MeterCommand | None
    meter: MeterLink | None
    kiosks: list[NearbyKiosk] = field(default_factory=list)
    timezone: str = "UTC"  # every time shown to the resident is in this zone


def _first(order: MeterCommand | None, *states: CommandState) -> datetime | None:
    if order is None:
        return None
    return next((e.at for e in order.events if e.state in states), None)


def payment_timeline(payment_id: str, uow: UnitOfWork, *, hotline: str) -> Timeline:
    with uow:
        payment = uow.payments.get(payment_id)
        if payment is None:
            raise NotFound(f"no payment {payment_id[:40]!r}", code="PAYMENT_NOT_FOUND")
        orders = uow.meter_commands.for_payment(payment_id)
        order = orders[0] if orders else None
        meter = uow.meters.get_for_account(payment.account_no) if payment.account_no else None
        customer = uow.customers.get(payment.account_no) if payment.account_no else None
        kiosks = uow.kiosks.list() if meter is not None and meter.kind == MeterKind.CARD else []
        balance_fen = uow.ledger.balance_fen(customer.account_no) if customer is not None else 0
        timezone = uow.local_timezone
    tz = ZoneInfo(timezone)
    booked_at = next((e.at for e in payment.events if e.state in (PaymentState.BOOKED, PaymentState.HELD)), None)
    paid_at = payment.paid_at or payment.events[0].at
    applied_at = _first(order, CommandState.APPLIED)
    steps = [
        Step("paid", Text("已付款", "Paid"), paid_at, True),
        Step("booked", Text("已入账", "Booked to your account"), booked_at, payment.state in (PaymentState.BOOKED, PaymentState.ADJUSTED)),
    ]
    nearby: list[NearbyKiosk] = []
    if meter is not None and meter.kind == MeterKind.CARD:
        steps.append(Step("written_to_card", Text("已写卡", "Written to your card"), _first(order, CommandState.WRITTEN_TO_CARD), applied_at is not None or order is not None and order.state == CommandState.WRITTEN_TO_CARD))
        nearby = [NearbyKiosk(k, d) for k, d in nearest_working(kiosks, home=customer.location if customer else None, community=customer.community if customer else "")]
    else:
        steps.append(Step("sent", Text("已发送到表", "Sent to your meter"), _first(order, CommandState.SENT), _first(order, CommandState.SENT) is not None))
    if closed_for_safety(meter):
        steps.append(Step("applied", Text("已到表（燃气已因安全原因关闭）", "On your meter (gas closed for safety)"), applied_at, applied_at is not None))
    else:
        steps.append(Step("applied", Text("可以用气", "Gas available"), applied_at, applied_at is not None))
    status, headline, next_step = _explain(payment, order, meter, nearby, hotline, owed_fen=max(0, -balance_fen), tz=tz)
    return Timeline(payment, status, headline, next_step, steps, order, meter, nearby, timezone)


def _kiosk_zh(n: NearbyKiosk) -> str:
    extra = [f"约 {n.distance_m} 米" if n.distance_m is not None else "", f"营业 {n.kiosk.opening_hours}" if n.kiosk.opening_hours else ""]
    return f"{n.kiosk.name}（{'，'.join([n.kiosk.address or n.kiosk.community, *filter(None, extra)])}）"


def _kiosk_en(n: NearbyKiosk) -> str:
    extra = [f"about {n.distance_m} m" if n.distance_m is not None else "", f"open {n.kiosk.opening_hours}" if n.kiosk.opening_hours else ""]
    return f"{n.kiosk.name} ({', '.join([n.kiosk.address or n.kiosk.community, *filter(None, extra)])})"


def _explain(
    payment: Payment,
    order: MeterCommand | None,
    meter: MeterLink | None,
    nearby: list[NearbyKiosk],
    hotline: str,
    *,
    owed_fen: int = 0,
    tz: tzinfo = UTC,
) -> tuple[str, Text, Text | None]:
    call = Text(f"请致电 {hotline}。", f"Please call {hotline}.")
    if payment.state == PaymentState.HELD:
        return (
            Status.HELD,
            Text("款项已收到，正在核对", "Payment received, being checked"),
            Text(
                f"我们收到了您的款项，但暂时无法入账（{payment.hold_reason}）。工作人员会处理；" + call.zh,
                f"We have your money but could not book it yet ({payment.hold_reason}). Staff will resolve it; " + call.en,
            ),
        )
    if payment.state == PaymentState.REFUND_REQUESTED:
        asked = payment.last_event(PaymentState.REFUND_REQUESTED)
        day = f"{asked.at.astimezone(tz):%Y-%m-%d}" if asked else ""
        return (
            Status.REFUND_REQUESTED,
            Text(f"已于 {day} 申请原路退款", f"Refund requested on {day}"),
            Text("这笔款项未能入账，已申请通过原支付渠道退回；渠道确认后显示“已退款”。", "This payment could not be booked; we asked the channel you paid with to send it back. It shows as refunded once the channel confirms."),
        )
    if payment.state == PaymentState.REFUNDED:
        refunded = payment.last_event(PaymentState.REFUNDED)
        day = f"{refunded.at.astimezone(tz):%Y-%m-%d}" if refunded else ""
        return (
            Status.REFUNDED,
            Text(f"已于 {day} 原路退款", f"Refunded on {day} through the way you paid"),
            Text("支付渠道已确认退款。如已用这笔钱购气，所欠金额将从下次缴费中扣除。", "The channel confirmed the refund. Gas already bought with it is owed and taken from your next payment."),
        )
    if payment.state == PaymentState.REVERSED:
        return (
            Status.REVERSED,
            Text("支付渠道未收到这笔款项，已冲正", "The channel never collected this payment: it was reversed"),
            Text("如已用这笔钱购气，所欠金额将从下次缴费中扣除。" + call.zh, "Gas already bought with it is owed and taken from your next payment. " + call.en),
        )
    if order is None and owed_fen > 0:
        owed = fen_to_yuan_text(owed_fen)
        return (
            Status.ARREARS,
            Text(f"账户仍欠款 ¥{owed}", f"Your account still owes ¥{owed}"),
            Text(
                "此前一笔已购气的款项被支付渠道退回或冲正，本次缴费先抵扣欠款；还清后才能购气。" + call.zh,
                "An earlier payment that had already bought gas was refunded or reversed by the channel; this payment paid towards what is owed first. Gas is bought once it is paid off. " + call.en,
            ),
        )
    if order is None:
        return Status.ON_BALANCE, Text("已存入账户余额", "On your account balance"), Text("金额已存入余额，将在下次购气时一并使用。", "The money is on your balance and goes with your next purchase.")
    litres = litres_as_m3_text(order.volume_litres or 0)
    if closed_for_safety(meter):
        assert meter is not None
        on_meter = order.state == CommandState.APPLIED
        leak = bool(meter.valve_reasons & ValveReason.LEAK_OR_TAMPER or Alarm(meter.alarms) & SAFETY_ALARMS)
        why = Text("燃气表报告了泄漏或异常" if leak else "燃气公司因安全原因暂停供气", "the meter reported a leak or tampering" if leak else "the gas company stopped gas for safety")
        return (
            Status.CLOSED_FOR_SAFETY,
            Text("燃气已因安全原因关闭", "Gas closed for safety"),
            Text(
                ("您购买的 " + litres + " 立方米已到表，" if on_meter else "您的购气已保存，") + f"但{why.zh}，阀门已关闭。请勿自行开阀" + ("，请开窗通风" if leak else "") + f"；请致电 {hotline}，由维修人员检查后恢复供气。钱不会丢失。",
                (f"Your {litres} m³ is on your meter, but " if on_meter else "Your purchase is kept, but ")
                + f"{why.en} and the valve is closed. Do not reopen it yourself"
                + ("; open the windows" if leak else "")
                + f". Please call {hotline}: a technician will check and restore gas. Your money is safe.",
            ),
        )
    if order.state == CommandState.APPLIED:
        if meter is not None and meter.valve_open is not True and meter.valve_reasons & (ValveReason.ARREARS | ValveReason.OPERATOR):
            return (
                Status.STUCK,
                Text(f"{litres} 立方米已到表，阀门由燃气公司关闭", f"{litres} m³ is on your meter; the gas company has closed the valve"),
                Text("阀门因欠费或工作人员操作而关闭。" + call.zh, "The valve was closed for arrears or by our staff. " + call.en),
            )
        if meter is not None and meter.valve_open is False and meter.reopen_needs_button:
            return Status.GAS_AVAILABLE, Text(f"{litres} 立方米已到表", f"{litres} m³ is on your meter"), Text("阀门仍关闭：请按住表上的红色按钮 3 秒开阀。", "The valve is still closed: press and hold the red button on the meter for 3 s.")
        if meter is not None and meter.valve_open is False:  # never "gas available" behind a closed valve
            if meter.valve_reasons & ValveReason.CREDIT:
                return (
                    Status.VALVE_CLOSED,
                    Text(f"{litres} 立方米已到表，但余量仍低于透支额，阀门关闭", f"{litres} m³ is on your meter, but its credit is still below the overdraft: the valve stays closed"),
                    Text("这笔购气先抵扣了透支的用气。请再缴费，余量回正后阀门会自动打开。", "This purchase first paid for gas used on overdraft. Pay again: the valve opens once the credit is above zero."),
                )
            return (
                Status.VALVE_CLOSED,
                Text(f"{litres} 立方米已到表，阀门正在打开", f"{litres} m³ is on your meter; the valve is being opened"),
                Text("燃气表下次联网时会开阀。若阀门一直未开，" + call.zh, "The meter opens its valve when it is next in touch. If it stays closed, " + call.en),
            )
        return Status.GAS_AVAILABLE, Text(f"{litres} 立方米已到表，可以用气", f"{litres} m³ is on your meter: gas available"), None
    if order.state == CommandState.EXPIRED:
        return (
            Status.WAITING_FOR_METER,
            Text("燃气表长时间未联网，购气待发送", "Your meter has been out of reach; the purchase waits for it"),
            Text(
                "燃气表联网后会自动重新发送。请按表上的通讯按钮唤醒它；若屏幕不亮，请先更换电池。钱不会丢失。",
                "It is sent again as soon as the meter reports. Press its communication button to wake it; if the display is dark, change the batteries first. Your money is safe.",
            ),
        )
    if order.state == CommandState.FAILED:
        return (
            Status.STUCK,
            Text("购气未能送达燃气表", "The purchase has not reached your meter"),
            Text(f"燃气表未确认这笔购气（{order.note}）。钱不会丢失；" + call.zh, f"Your meter has not confirmed this purchase ({order.note}). Your money is safe; " + call.en),
        )
    if order.route == MeterKind.CARD:
        if order.state == CommandState.WRITTEN_TO_CARD:
            return (
                Status.CARD_WRITTEN,
                Text("已写卡，请插卡", "Written to your card: insert it in the meter"),
                Text("请把燃气卡插入燃气表，表读卡后即可用气。", "Insert the card in your gas meter; gas is available once the meter has read it."),
            )
        places = "、".join(_kiosk_zh(n) for n in nearby)
        places_en = "; ".join(_kiosk_en(n) for n in nearby)
        return (
            Status.WAITING_FOR_CARD,
            Text("待写卡：请到自助机或营业厅圈存", "Waiting for your card: write it at a kiosk or counter"),
            Text(
                f"您的燃气表是 IC 卡表，需要把购气写入卡中。最近的自助机：{places or '请咨询营业厅'}。",
                f"Your meter is a card meter: the purchase must be written to your card. Nearest kiosks: {places_en or 'ask a service hall'}.",
            ),
        )
    if order.state in (CommandState.SENT, CommandState.DELIVERED):
        return Status.SENT_TO_METER, Text("已发送到燃气表，等待表确认", "Sent to your meter, waiting for it to confirm"), None
    asleep_since = meter.last_report_at if meter is not None else None
    if meter is not None and meter.link_state == LinkState.OFFLINE:
        return (
            Status.WAITING_FOR_METER,
            Text("燃气表长时间未联网", "Your meter has been silent for a long time"),
            Text(
                f"燃气表自 {local_time_text(asleep_since, tz)} 未联网。请按表上的通讯按钮唤醒它；若屏幕不亮，请先更换电池。" if asleep_since else "燃气表尚未联网。请按表上的通讯按钮；若屏幕不亮，请先更换电池。",
                (f"Your meter has not been in touch since {local_time_text(asleep_since, tz)}. " if asleep_since else "Your meter has not been in touch yet. ")
                + "Press its communication button to wake it; if the display is dark, change the batteries first.",
            ),
        )
    return (
        Status.WAITING_FOR_METER,
        Text("等待燃气表联网", "Waiting for your meter to wake"),
        Text(
            "燃气表通常每天联网一次，联网后会自动充值。急用可按表上的通讯按钮唤醒。",
            "Your meter wakes about once a day and takes the purchase then. In a hurry? Press its communication button to wake it.",
        ),
    )


def litres_as_m3_text(litres: int) -> str:
    """33444 -> '33.444' (m³), in integers all the way."""
    return f"{litres // 1000}.{litres % 1000:03d}"


def resident_token(secret: str, payment_id: str) -> str:
    """The unguessable part of a resident's link: HMAC-SHA256 of the payment id, 128 bits, hex."""
    return hmac.new(secret.encode(), payment_id.encode(), hashlib.sha256).hexdigest()[:32]


def resident_link_secret(uow: UnitOfWork) -> str:
    with uow:
        secret = uow.site_secrets.get_or_create(RESIDENT_LINK_SECRET, uow.clock.now())
        uow.commit()
        return secret


def check_resident_token(secret: str, payment_id: str, token: str) -> None:
    if not hmac.compare_digest(resident_token(secret, payment_id), token or ""):
        raise NotFound("no such payment page", code="PAYMENT_NOT_FOUND")
