"""Meter delivery use cases: buy gas with a booked payment, send it, hear back, watch it.

Each function runs in one unit of work. The meter row is locked first in every one of them, so
purchases, acknowledgements and the dispatcher for one meter never interleave; on PostgreSQL a
busy meter is skipped by other dispatchers (FOR UPDATE SKIP LOCKED).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from gasworks.adapters.meters import cjt188, frame_security
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import (
    OPEN_STATES,
    STOPPED_STATES,
    CommandKind,
    CommandState,
    DeliveryPolicy,
    LinkState,
    MeterCommand,
    MeterLink,
    Send,
    credit_order,
    expire_due,
    mark_sent,
    new_wake_window,
    next_step,
    revive_on_return,
    settle_by_meter,
    valve_command,
)
from gasworks.domain.errors import Conflict, MalformedFrame, NotFound
from gasworks.domain.ledger import DELIVERY, REVENUE, TransactionKind, prepaid_account, presented_balance_fen, transfer
from gasworks.domain.meter_messages import (
    Alarm,
    CommandRefused,
    CurrentData,
    MeterMessage,
    PurchaseAck,
    PurchaseRecord,
    ReadCurrentData,
    ReadPurchaseRecord,
    SetValve,
    ValveAck,
    WritePurchase,
)
from gasworks.domain.meter_security import FrameRefused
from gasworks.domain.tariffs import convert
from gasworks.observability import (
    alerts_open,
    deliveries_open,
    meter_commands_sent,
    meter_frames_refused,
    meters_by_link_state,
    purchases_applied,
)
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

METERS_CHANNEL = "meters"  # how refused meter frames are filed among intake rejections
SAFETY_ALARMS = Alarm.LEAK | Alarm.TAMPER | Alarm.MAGNETIC_ATTACK | Alarm.VALVE_FAULT


def policy_from(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        wake_window_s=settings.meter_wake_window_s,
        ack_wait_s=settings.meter_ack_wait_s,
        ack_wait_s_max=settings.meter_ack_wait_s_max,
        sends_per_wake_max=settings.meter_sends_per_wake_max,
        ttl_s=settings.meter_command_ttl_s,
        open_commands_per_meter_max=settings.meter_open_commands_max,
        offline_after_s=settings.meter_offline_after_s,
        iot_applied_within_s=settings.iot_applied_within_s,
        overdraft_litres=settings.meter_overdraft_litres,
    )


# ---- buying gas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    order: MeterCommand | None
    reason: str  # why there is no order, when there is none


def buy_gas(uow: UnitOfWork, link: MeterLink, *, payment_id: str) -> Purchase:
    """Turn the account's whole prepaid balance into a credit order for its meter.

    Runs inside the caller's unit of work (the booking's: transactional outbox), after the payment
    is on the balance; `link` is the account's meter, which the caller locked before it touched the
    balance (meter first, then balance, everywhere). Money that cannot buy a whole litre stays on
    the balance for next time.
    """
    now, policy, account_no = uow.clock.now(), uow.delivery, link.account_no
    customer = uow.customers.get(account_no)
    if customer is None:
        return Purchase(None, f"account {account_no} does not exist")
    today = now.astimezone(ZoneInfo(uow.local_timezone)).date()
    tariff = uow.tariffs.in_force(customer.customer_class, today)
    if tariff is None:
        uow.alerts.raise_once(kind="NO_TARIFF", subject=customer.customer_class.value, reason=f"no tariff in force on {today} for {customer.customer_class}; payments stay on balances", at=now)
        return Purchase(None, "no tariff in force: the money stays on the balance")
    code = prepaid_account(account_no)
    balance_fen = presented_balance_fen(code, uow.ledger.entries_sum_fen(code))
    if balance_fen <= 0:
        return Purchase(None, "no money on the balance")
    tier_year = tariff.tier_year_of(today)
    bought = link.litres_bought_tier_year if link.tier_year == tier_year else 0
    conversion = convert(balance_fen, tiers=tariff.tiers, litres_bought_this_year=bought)
    if conversion.litres == 0:
        return Purchase(None, f"{balance_fen} fen is too little for a litre: it stays on the balance")
    seq = link.purchase_seq_issued + 1
    order = credit_order(
        meter_serial=link.serial,
        account_no=account_no,
        route=link.kind,
        payment_id=payment_id,
        purchase_seq=seq,
        volume_litres=conversion.litres,
        cost_fen=conversion.cost_fen,
        at=now,
        ttl_s=policy.ttl_s,
    )
    order.tier_pieces = tuple((p.tier_no, p.litres, p.cost_fen, p.price_milli_fen_per_m3) for p in conversion.pieces)
    uow.ledger.post(
        transfer(
            TransactionKind.PURCHASE,
            debit=code,
            credit=DELIVERY,
            amount_fen=conversion.cost_fen,
            at=now,
            payment_id=payment_id,
            memo=f"purchase #{seq} for meter {link.serial}: {conversion.litres} L",
        )
    )
    if uow.meter_commands.count_open(link.serial) >= policy.open_commands_per_meter_max:
        uow.alerts.raise_once(
            kind="METER_BACKLOG", subject=f"meter:{link.serial}",
            reason=f"{policy.open_commands_per_meter_max}+ commands waiting for this meter; purchases are kept and queue behind them", at=now,
        )  # fmt: skip
    uow.meter_commands.add(order)
    if link.kind == MeterKind.IOT:
        uow.meter_commands.announce(link.serial)  # a listening worker sends at once if the meter is awake
    link.purchase_seq_issued = seq
    link.tier_year = tier_year
    link.litres_bought_tier_year = bought + conversion.litres
    uow.meters.save(link)
    return Purchase(order, "")


# ---- hearing from meters ------------------------------------------------------------------------


@dataclass(frozen=True)
class UplinkOutcome:
    serial: str
    accepted: bool
    what: str
    commands_waiting: bool = False  # the meter has something to be sent while it listens


def handle_uplink(topic_serial: str, payload: bytes, uow: UnitOfWork, *, carrier_authenticated: bool = False) -> UplinkOutcome:
    """One frame from a meter: a report, an acknowledgement or a refusal. Bad frames are refused and kept.
    `carrier_authenticated`: it came through an authenticated carrier platform (the only way for models without MAC)."""
    try:  # MAC, key version and counter checked first (adapters/meters/frame_security.py)
        message = frame_security.open_uplink(payload, topic_serial, uow, carrier_authenticated=carrier_authenticated).message
    except (MalformedFrame, FrameRefused) as error:
        return _refuse(uow, topic_serial, error.code, error.message, payload)
    if message.serial != topic_serial:
        return _refuse(uow, topic_serial, "FOREIGN_FRAME", f"frame addressed to meter {message.serial} arrived on meter {topic_serial}'s topic", payload)
    if isinstance(message, (WritePurchase, SetValve, ReadCurrentData, ReadPurchaseRecord)):
        return _refuse(uow, topic_serial, "NOT_AN_UPLINK", f"{type(message).__name__} is something gasworks sends, not a meter", payload)
    with uow:
        now = uow.clock.now()
        link = uow.meters.get(message.serial, lock=True)
        if link is not None and link.kind == MeterKind.IOT:
            commands = uow.meter_commands.for_meter(link.serial, states=OPEN_STATES | STOPPED_STATES, route=MeterKind.IOT)
            what = _apply_message(message, link, commands, uow, uow.delivery, now)
            for command in commands:
                if command.events:
                    uow.meter_commands.save(command, now)
            uow.meters.save(link)
            uow.commit()
            waiting = any(c.state in OPEN_STATES for c in commands)
            return UplinkOutcome(link.serial, True, what, commands_waiting=waiting)
    return _refuse(uow, topic_serial, "UNKNOWN_METER", f"no IoT meter {message.serial}", payload)


def _apply_message(message: MeterMessage, link: MeterLink, commands: list[MeterCommand], uow: UnitOfWork, policy: DeliveryPolicy, now: datetime) -> str:
    settled: list[MeterCommand] = []
    match message:
        case CurrentData():
            _take_report(message, link, uow, now, policy)
            new_wake_window([c for c in commands if c.state in (CommandState.SENT, CommandState.DELIVERED)])
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=link.valve_open, at=now, source="meter report")
            expired = [c for c in commands if c.state == CommandState.EXPIRED]
            revive_on_return(expired, at=now, ttl_s=policy.ttl_s)
            for command in expired:
                clear_command_alerts(uow, command, now)
            what = "report"
        case PurchaseAck():
            link.applied_seq = max(link.applied_seq, message.applied_seq)
            link.credit_litres = message.credit_litres
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=None, at=now, source="acknowledged")
            what = "purchase acknowledged"
        case PurchaseRecord():
            link.applied_seq = max(link.applied_seq, message.last_applied_seq)
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=None, at=now, source="purchase record")
            what = "purchase record"
        case ValveAck():
            link.valve_open = message.valve_open
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=message.valve_open, at=now, source="acknowledged")
            what = "valve acknowledged"
        case CommandRefused():
            what = _take_refusal(message, link, commands, uow, now)
        case _:
            what = "ignored"
    for command in settled:
        if command.kind == CommandKind.CREDIT:
            book_applied(uow, command, now)
        else:
            clear_command_alerts(uow, command, now)
    _keep_valve_right(link, commands, uow, policy, now)
    return what


def _take_report(report: CurrentData, link: MeterLink, uow: UnitOfWork, now: datetime, policy: DeliveryPolicy) -> None:
    if report.last_applied_seq < link.applied_seq:
        uow.alerts.raise_once(
            kind="METER_SEQUENCE_BACKWARDS", subject=f"meter:{link.serial}",
            reason=f"meter reports last purchase #{report.last_applied_seq}, it had applied #{link.applied_seq}: replaced or reset meter?", at=now,
        )  # fmt: skip
    link.applied_seq = max(link.applied_seq, report.last_applied_seq)
    link.last_report_at = now
    link.awake_until = now + timedelta(seconds=policy.wake_window_s)
    if link.link_state == LinkState.OFFLINE:
        uow.alerts.clear(kind="METER_OFFLINE", subject=f"meter:{link.serial}", at=now)
    link.link_state = LinkState.ONLINE
    link.credit_litres = report.credit_litres
    link.cumulative_litres = report.cumulative_litres
    link.valve_open = report.valve_open
    link.battery_mv = report.battery_mv
    before, link.alarms = Alarm(link.alarms), int(report.alarms)
    for alarm in Alarm:  # only changes touch the alerts table: a daily report is one row's worth of work
        if alarm in report.alarms and alarm not in before:
            uow.alerts.raise_once(kind=f"METER_{alarm.name}", subject=f"meter:{link.serial}", reason=f"meter {link.serial} reports {alarm.name.lower().replace('_', ' ')}", at=now)
        elif alarm in before and alarm not in report.alarms:
            uow.alerts.clear(kind=f"METER_{alarm.name}", subject=f"meter:{link.serial}", at=now)


def _take_refusal(refusal: CommandRefused, link: MeterLink, commands: list[MeterCommand], uow: UnitOfWork, now: datetime) -> str:
    di_of = {CommandKind.CREDIT: cjt188.DI_WRITE_PURCHASE, CommandKind.VALVE_OPEN: cjt188.DI_VALVE, CommandKind.VALVE_CLOSE: cjt188.DI_VALVE}
    in_flight = next((c for c in commands if c.state == CommandState.SENT and di_of[c.kind] == refusal.refused_di), None)
    if in_flight is None:
        return f"refusal {refusal.error.name} matched no command in flight"
    in_flight.move_to(CommandState.FAILED, now, f"the meter refused it: {refusal.error.name}")
    uow.alerts.raise_once(
        kind="COMMAND_REFUSED", subject=f"meter:{link.serial}",
        reason=f"meter {link.serial} refused {in_flight.kind} #{in_flight.id} ({refusal.error.name}); reissue or cancel it", at=now,
    )  # fmt: skip
    return f"command refused: {refusal.error.name}"


def clear_command_alerts(uow: UnitOfWork, command: MeterCommand, at: datetime) -> None:
    """A command settled, sent again or cancelled is no longer late or expired."""
    for kind in ("PURCHASE_NOT_APPLIED", "COMMAND_EXPIRED"):
        uow.alerts.clear(kind=kind, subject=f"command:{command.id}", at=at)


def book_applied(uow: UnitOfWork, order: MeterCommand, at: datetime) -> None:
    assert order.cost_fen is not None
    uow.ledger.post(
        transfer(
            TransactionKind.GAS_APPLIED,
            debit=DELIVERY,
            credit=REVENUE,
            amount_fen=order.cost_fen,
            at=at,
            payment_id=order.payment_id,
            memo=f"purchase #{order.purchase_seq} applied by meter {order.meter_serial}",
        )
    )
    clear_command_alerts(uow, order, at)
    purchases_applied.labels(route=order.route.value).inc()
    log.info("purchase_applied", meter=order.meter_serial, purchase_seq=order.purchase_seq, payment_id=order.payment_id)


def _keep_valve_right(link: MeterLink, commands: list[MeterCommand], uow: UnitOfWork, policy: DeliveryPolicy, now: datetime) -> None:
    """Close on exhausted credit past the overdraft; reopen after a purchase; never reopen on a safety alarm."""
    open_kinds = {c.kind for c in commands if c.is_open}
    credit_on_its_way = CommandKind.CREDIT in open_kinds
    if link.valve_open is None or link.credit_litres is None or credit_on_its_way:
        return
    if not link.valve_open and link.credit_litres > 0 and CommandKind.VALVE_OPEN not in open_kinds:
        if Alarm(link.alarms) & SAFETY_ALARMS or link.reopen_needs_button:
            return  # a person must reopen it: the timeline says so
        command = valve_command(meter_serial=link.serial, account_no=link.account_no, open_=True, at=now, ttl_s=policy.ttl_s, why="credit is back: reopen the valve")
        uow.meter_commands.add(command)
        commands.append(command)
    elif link.valve_open and link.credit_litres <= -policy.overdraft_litres and CommandKind.VALVE_CLOSE not in open_kinds:
        command = valve_command(
            meter_serial=link.serial, account_no=link.account_no, open_=False, at=now, ttl_s=policy.ttl_s,
            why=f"credit {link.credit_litres} L is past the {policy.overdraft_litres} L overdraft: close the valve",
        )  # fmt: skip
        uow.meter_commands.add(command)
        commands.append(command)


def _refuse(uow: UnitOfWork, serial: str, code: str, reason: str, payload: bytes) -> UplinkOutcome:
    with uow:
        uow.rejections.add(
            at=uow.clock.now(), channel_id=METERS_CHANNEL, code=code, message=reason[:500], remote_addr="",
            request_summary={"topic_serial": serial[:20], "frame_hex": payload[:96].hex()},
        )  # fmt: skip
        uow.commit()
    meter_frames_refused.labels(code=code).inc()
    log.warning("meter_frame_refused", topic_serial=serial, code=code, reason=reason)
    return UplinkOutcome(serial, False, f"{code}: {reason}")


# ---- sending to meters --------------------------------------------------------------------------


class Publisher:
    """What the dispatcher needs of a transport: hand one frame to one meter, or raise."""

    def publish(self, serial: str, payload: bytes) -> None: ...


def frame_for(command: MeterCommand, uow: UnitOfWork) -> bytes:
    """The command sealed for its meter (key, next downlink counter, MAC), in the caller's unit of work."""
    frame_seq = command.frame_seq
    if command.kind == CommandKind.CREDIT:
        assert command.purchase_seq is not None and command.volume_litres is not None
        return frame_security.seal_downlink(WritePurchase(command.meter_serial, frame_seq, command.purchase_seq, command.volume_litres), uow)
    return frame_security.seal_downlink(SetValve(command.meter_serial, frame_seq, command.kind == CommandKind.VALVE_OPEN), uow)


def dispatch_meter(serial: str, uow: UnitOfWork, publisher: Publisher) -> MeterCommand | None:
    """Send this meter the next thing it needs, if it is awake and nothing is in flight. Returns what was sent."""
    with uow:
        now = uow.clock.now()
        link = uow.meters.lock_if_free(serial)
        if link is None:
            return None  # another dispatcher has it
        commands = uow.meter_commands.for_meter(serial, route=MeterKind.IOT)
        step = next_step(commands, awake_until=link.awake_until, now=now, policy=uow.delivery)
        if not isinstance(step, Send):
            return None
        command = step.command
        publisher.publish(serial, frame_for(command, uow))  # before commit: a resend is harmless, a lost send is not
        mark_sent(command, at=now, policy=uow.delivery)
        uow.meter_commands.save(command, now)
        uow.commit()
    meter_commands_sent.labels(kind=command.kind.value).inc()
    return command


# ---- watching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchReport:
    expired: int
    offline: int
    overdue: int


def watch_deliveries(uow_factory: Callable[[], UnitOfWork], *, batch_max: int) -> WatchReport:
    """Expire commands past their time to live, mark silent meters offline, flag late purchases. All loudly."""
    expired = offline = overdue = 0
    with uow_factory() as uow:
        now, policy = uow.clock.now(), uow.delivery
        due = uow.meter_commands.meters_with_due_expiry(now, batch_max)
        silent = uow.meters.silent_since(now - timedelta(seconds=policy.offline_after_s), batch_max)
    for serial in due:
        with uow_factory() as uow:
            now = uow.clock.now()
            if uow.meters.get(serial, lock=True) is None:
                continue
            commands = uow.meter_commands.for_meter(serial, route=MeterKind.IOT)
            for command in expire_due(commands, now):
                uow.meter_commands.save(command, now)
                uow.alerts.raise_once(kind="COMMAND_EXPIRED", subject=f"command:{command.id}", reason=f"{command.kind} #{command.id} for meter {serial}: {command.note}", at=now)
                expired += 1
            uow.commit()
    for serial in silent:
        with uow_factory() as uow:
            now = uow.clock.now()
            link = uow.meters.get(serial, lock=True)
            if link is None or link.last_report_at is None or link.last_report_at >= now - timedelta(seconds=policy.offline_after_s):
                continue
            link.link_state = LinkState.OFFLINE
            uow.meters.save(link)
            uow.alerts.raise_once(kind="METER_OFFLINE", subject=f"meter:{serial}", reason=f"meter {serial} silent since {link.last_report_at:%Y-%m-%d %H:%M} UTC", at=now)
            uow.commit()
            offline += 1
    with uow_factory() as uow:
        now = uow.clock.now()
        late = uow.meter_commands.open_iot_credits_older_than(now - timedelta(seconds=policy.iot_applied_within_s), batch_max)
        for order in late:
            link = uow.meters.get(order.meter_serial)
            # The service level runs from the meter's first report after the purchase.
            if link is None or link.last_report_at is None or link.last_report_at < order.created_at:
                continue
            if now - link.last_report_at < timedelta(seconds=policy.iot_applied_within_s):
                continue
            if uow.alerts.raise_once(
                kind="PURCHASE_NOT_APPLIED", subject=f"command:{order.id}",
                reason=f"purchase #{order.purchase_seq} for meter {order.meter_serial} not applied {policy.iot_applied_within_s} s after the meter reported: {order.note}", at=now,
            ):  # fmt: skip
                overdue += 1
        uow.commit()
        publish_gauges(uow)
    return WatchReport(expired, offline, overdue)


def publish_gauges(uow: UnitOfWork) -> None:
    """Open deliveries by route and state, open alerts by kind, meters by link state: for Prometheus."""
    deliveries_open.clear()
    for (route, state), n in uow.meter_commands.counts_by_state().items():
        if state in {s.value for s in OPEN_STATES | STOPPED_STATES}:
            deliveries_open.labels(route=route, state=state).set(n)
    alerts_open.clear()
    for kind, n in uow.alerts.count_open_by_kind().items():
        alerts_open.labels(kind=kind).set(n)
    for state, n in uow.meters.count_by_link_state().items():
        meters_by_link_state.labels(state=state).set(n)


# ---- operators ---------------------------------------------------------------------------------


def reissue_command(command_id: int, uow: UnitOfWork, *, actor: str, reason: str) -> MeterCommand:
    """A failed or expired command goes back to pending, with a fresh time to live."""
    with uow:
        now = uow.clock.now()
        command = _command_for_operator(uow, command_id)
        if command.state not in STOPPED_STATES:
            raise Conflict(f"command {command_id} is {command.state}; only failed or expired commands are reissued", code="NOT_REISSUABLE")
        command.move_to(CommandState.PENDING, now, f"reissued by {actor}: {reason.strip()[:120]}")
        command.sends = command.window_sends = 0
        command.next_send_at = None
        if command.route == MeterKind.IOT:
            command.expires_at = now + timedelta(seconds=uow.delivery.ttl_s)
        uow.meter_commands.save(command, now)
        clear_command_alerts(uow, command, now)
        uow.audit.append(at=now, actor=actor, action="command.reissue", subject=f"command:{command.id}", detail={"reason": reason.strip()[:200]})
        uow.commit()
        return command


def cancel_command(command_id: int, uow: UnitOfWork, *, actor: str, reason: str) -> MeterCommand:
    """Valve commands may be cancelled. A credit order may not: the meter expects every purchase serial
    in turn, so cancelling one would block every later purchase. A wrong purchase is repaired by a
    refund through reconciliation, never by pretending it was not sent."""
    with uow:
        now = uow.clock.now()
        command = _command_for_operator(uow, command_id)
        if command.kind == CommandKind.CREDIT:
            raise Conflict("a credit order cannot be cancelled: later purchase serials depend on it; reissue it", code="CREDIT_NOT_CANCELLABLE")
        if command.state not in (CommandState.PENDING, *STOPPED_STATES):
            raise Conflict(f"command {command_id} is {command.state}; only pending, failed or expired commands are cancelled", code="NOT_CANCELLABLE")
        command.move_to(CommandState.CANCELLED, now, f"cancelled by {actor}: {reason.strip()[:120]}")
        uow.meter_commands.save(command, now)
        clear_command_alerts(uow, command, now)
        uow.audit.append(at=now, actor=actor, action="command.cancel", subject=f"command:{command.id}", detail={"reason": reason.strip()[:200]})
        uow.commit()
        return command


def _command_for_operator(uow: UnitOfWork, command_id: int) -> MeterCommand:
    peek = uow.meter_commands.get(command_id, with_events=False)
    if peek is None:
        raise NotFound(f"no meter command {command_id}", code="COMMAND_NOT_FOUND")
    uow.meters.get(peek.meter_serial, lock=True)  # the meter first, as everywhere
    command = uow.meter_commands.get(command_id, with_events=False)
    assert command is not None
    return command
