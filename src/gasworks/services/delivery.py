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

from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import (
    OPEN_STATES,
    OPERATOR_CLOSE_REASONS,
    SAFETY_REASONS,
    STOPPED_STATES,
    Alert,
    AlertKind,
    ClaimVerdict,
    ClearedBy,
    CommandKind,
    CommandState,
    DeliveryPolicy,
    LinkState,
    MeterCommand,
    MeterLink,
    MeterModel,
    PurchaseSite,
    ReportKey,
    ReportOrder,
    Send,
    ValveReason,
    clear_by_person,
    clear_by_top_up,
    credit_order,
    credit_past_overdraft,
    expire_due,
    flag_name,
    judge_claim,
    mark_sent,
    new_wake_window,
    next_step,
    report_order,
    revive_on_return,
    seq_on_wire,
    settle_by_meter,
    unwrap_seq,
    valve_command,
    valve_reason_names,
)
from gasworks.domain.errors import Conflict, InvalidInput, MalformedFrame, NotFound
from gasworks.domain.frames import UplinkFrame
from gasworks.domain.ledger import DELIVERY, REVENUE, LedgerTransaction, TransactionKind, prepaid_account, presented_balance_fen, transfer
from gasworks.domain.meter_messages import (
    DI_VALVE,
    DI_WRITE_PURCHASE,
    Alarm,
    CommandRefused,
    CurrentData,
    MeterErrorCode,
    MeterMessage,
    PurchaseAck,
    PurchaseRecord,
    ReadCurrentData,
    ReadPurchaseRecord,
    SetValve,
    ValveAck,
    WritePurchase,
)
from gasworks.domain.meter_security import FrameNotSealed, FrameRefused, MeterFrameSecurity
from gasworks.domain.tariffs import convert
from gasworks.observability import (
    alerts_open,
    deliveries_open,
    dispatch_batches,
    meter_commands_sent,
    meter_frames_refused,
    meters_by_link_state,
    purchases_applied,
)
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

METERS_CHANNEL = "meters"  # how refused meter frames are filed among intake rejections
SAFETY_ALARMS = Alarm.LEAK | Alarm.TAMPER | Alarm.MAGNETIC_ATTACK | Alarm.VALVE_FAULT  # never reopened remotely
LEAK_OR_TAMPER_ALARMS = Alarm.LEAK | Alarm.TAMPER | Alarm.MAGNETIC_ATTACK  # the valve closes until a technician resolves it


def policy_from(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        wake_window_s=settings.meter_wake_window_s,
        ack_wait_s=settings.meter_ack_wait_s,
        ack_wait_s_max=settings.meter_ack_wait_s_max,
        sends_per_wake_max=settings.meter_sends_per_wake_max,
        ttl_s=settings.meter_command_ttl_s,
        open_commands_per_meter_max=settings.meter_open_commands_max,
        offline_after_s=settings.meter_offline_after_s,
        offline_margin_s=settings.meter_offline_margin_s,
        iot_applied_within_s=settings.iot_applied_within_s,
        overdraft_litres=settings.meter_overdraft_litres,
    )


# ---- buying gas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    order: MeterCommand | None
    reason: str  # why there is no order, when there is none
    transaction: LedgerTransaction | None = None  # balance -> delivery, for the order's cost


def buy_gas(uow: UnitOfWork, link: MeterLink, *, payment_id: str) -> Purchase:
    """Turn the account's whole prepaid balance into a credit order for its meter.

    Runs inside the caller's unit of work (the booking's: transactional outbox), after the payment
    is on the balance; `link` is the account's meter, which the caller locked before it touched the
    balance (meter first, then balance, everywhere). Money that cannot buy a whole litre stays on
    the balance for next time.
    """
    customer = uow.customers.get(link.account_no)
    if customer is None:
        return Purchase(None, f"account {link.account_no} does not exist")
    site = PurchaseSite(link, customer.customer_class, uow.ledger.entries_sum_fen(prepaid_account(link.account_no)), open_commands=0)
    purchase = plan_purchase(uow, site, payment_id=payment_id, prepaid_entries_sum_fen=site.prepaid_entries_sum_fen)
    if purchase.order is None or purchase.transaction is None:
        return purchase
    uow.ledger.post(purchase.transaction)
    place_purchase(uow, purchase.order, link, open_commands=uow.meter_commands.count_open(link.serial))
    return purchase


def plan_purchase(uow: UnitOfWork, site: PurchaseSite, *, payment_id: str, prepaid_entries_sum_fen: int) -> Purchase:
    """The credit order and its ledger transaction that turn the whole balance (its cached entries
    sum given, as it stands after whatever the caller is posting with it) into gas at the tariff in
    force, tier by tier. Moves the meter's purchase serial and tier-year volume on in `site.link`;
    writes nothing but an alert when no tariff is in force (`place_purchase` writes the order)."""
    now, policy, link = uow.clock.now(), uow.delivery, site.link
    account_no = link.account_no
    today = now.astimezone(ZoneInfo(uow.local_timezone)).date()
    tariff = uow.tariffs.in_force(site.customer_class, today)
    if tariff is None:
        uow.alerts.raise_once(kind=AlertKind.NO_TARIFF, subject=site.customer_class.value, reason=f"no tariff in force on {today} for {site.customer_class}; payments stay on balances", at=now)
        return Purchase(None, "no tariff in force: the money stays on the balance")
    code = prepaid_account(account_no)
    balance_fen = presented_balance_fen(code, prepaid_entries_sum_fen)
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
    transaction = transfer(
        TransactionKind.PURCHASE,
        debit=code,
        credit=DELIVERY,
        amount_fen=conversion.cost_fen,
        at=now,
        payment_id=payment_id,
        memo=f"purchase #{seq} for meter {link.serial}: {conversion.litres} L",
    )
    link.purchase_seq_issued = seq
    link.tier_year = tier_year
    link.litres_bought_tier_year = bought + conversion.litres
    return Purchase(order, "", transaction)


def place_purchase(uow: UnitOfWork, order: MeterCommand, link: MeterLink, *, open_commands: int) -> None:
    """The outbox: the credit order joins its meter's queue (an alert when the queue is long), a
    listening worker hears of it at commit, and the meter's serial and tier-year volume are saved."""
    now, policy = uow.clock.now(), uow.delivery
    if open_commands >= policy.open_commands_per_meter_max:
        uow.alerts.raise_once(
            kind=AlertKind.METER_BACKLOG, subject=f"meter:{link.serial}",
            reason=f"{policy.open_commands_per_meter_max}+ commands waiting for this meter; purchases are kept and queue behind them", at=now,
        )  # fmt: skip
    uow.meter_commands.add(order)
    if link.kind == MeterKind.IOT:
        uow.meter_commands.announce(link.serial)  # a listening worker sends at once if the meter is awake
    uow.meters.save(link)


# ---- hearing from meters ------------------------------------------------------------------------


@dataclass(frozen=True)
class UplinkOutcome:
    serial: str
    accepted: bool
    what: str
    commands_waiting: bool = False  # the meter has something to be sent while it listens


def handle_uplink(topic_serial: str, frame: UplinkFrame, uow: UnitOfWork, *, carrier_authenticated: bool = False) -> UplinkOutcome:
    """One frame from a meter, read at the edge: a report, an acknowledgement or a refusal. Bad frames
    are refused and kept; so are stale reports, replies matching nothing sent, and claims beyond what
    was issued. (A frame that cannot be read at all never gets here: `refuse_unreadable_frame`.)
    `carrier_authenticated`: it came through an authenticated carrier platform (the only way for models without MAC)."""
    payload = frame.raw  # kept as received in any refusal record
    if frame.serial != topic_serial:
        return _refuse(uow, topic_serial, "FOREIGN_FRAME", f"frame addressed to meter {frame.serial} arrived on meter {topic_serial}'s topic", payload)
    if not frame.is_reply:  # a downlink reflected back: its MAC is good, its counter is the other direction's
        return _refuse(uow, topic_serial, "NOT_AN_UPLINK", f"control {frame.control:#04x} is something gasworks sends, not a meter", payload)
    try:  # MAC, key version and counter checked first (uow.frames: adapters/meters/frame_security.py)
        opened = uow.frames.open_uplink(frame, uow, carrier_authenticated=carrier_authenticated)
        message, counter = opened.message, opened.counter
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
            taken = apply_message(message, link, commands, uow, uow.delivery, now, counter=counter)
            if taken.refusal is not None:
                record_frame_refusal(uow, link.serial, *taken.refusal, payload)
            for command in commands:
                if command.events or command.id in taken.rewound_ids:
                    uow.meter_commands.save(command, now)
            uow.meters.save(link)
            uow.commit()
            if taken.refusal is not None:
                count_frame_refusal(link.serial, *taken.refusal)
                return UplinkOutcome(link.serial, False, f"{taken.refusal[0]}: {taken.refusal[1]}")
            waiting = any(c.state in OPEN_STATES for c in commands)
            return UplinkOutcome(link.serial, True, taken.what, commands_waiting=waiting)
    return _refuse(uow, topic_serial, "UNKNOWN_METER", f"no IoT meter {message.serial}", payload)


@dataclass(frozen=True)
class MessageTaken:
    what: str
    refusal: tuple[str, str] | None = None  # (code, reason): the frame changed nothing and is kept among rejections
    rewound_ids: frozenset[int | None] = frozenset()  # in flight, given a fresh allowance of sends by a new wake: saved too


def apply_message(message: MeterMessage, link: MeterLink, commands: list[MeterCommand], uow: UnitOfWork, policy: DeliveryPolicy, now: datetime, *, counter: int | None = None) -> MessageTaken:
    settled: list[MeterCommand] = []
    rewound_ids: frozenset[int | None] = frozenset()
    match message:
        case CurrentData():
            # Sealed reports are ordered by their frame counter, against the newest report *taken*
            # (two workers may take frames 10 and 11 in either order); the meter's clock only
            # between unsealed ones, so a clock set to 2030 once cannot make later reports stale.
            newest = ReportKey(link.last_report_clock, link.last_report_counter) if link.last_report_clock else None
            order = report_order(ReportKey(message.meter_clock, counter), newest)
            if order == ReportOrder.OLDER:
                return MessageTaken("stale report", ("STALE_REPORT", f"report of {message.meter_clock:%Y-%m-%d %H:%M:%S} (meter clock) is older than the newest taken, of {link.last_report_clock:%Y-%m-%d %H:%M:%S}: ignored"))
            claimed = unwrap_seq(message.last_applied_seq, applied_seq=link.applied_seq, highest_issued=_highest_sent(link, commands), modulus=link.seq_modulus)
            verdict = judge_claim(claimed, applied_seq=link.applied_seq, highest_issued=link.purchase_seq_issued)
            if verdict == ClaimVerdict.BEYOND_ISSUED:
                _take_alarms(message, link, uow, now)  # its serial is not believed; a leak it reports is, to be safe
                return _claims_unissued(uow, link, claimed, "report", now)
            if verdict == ClaimVerdict.BACKWARDS and order == ReportOrder.SAME:
                return MessageTaken("stale report", ("STALE_REPORT", f"a report of the same moment as the newest taken claims purchase #{claimed}, below #{link.applied_seq}: ignored"))
            _take_report(message, link, uow, now, policy, claimed=claimed, backwards=verdict == ClaimVerdict.BACKWARDS)
            link.last_report_counter = counter
            in_flight = [c for c in commands if c.state in (CommandState.SENT, CommandState.DELIVERED)]
            new_wake_window(in_flight)
            rewound_ids = frozenset(c.id for c in in_flight)
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=link.valve_open, at=now, source="meter report")
            expired = [c for c in commands if c.state == CommandState.EXPIRED]
            revive_on_return(expired, at=now, ttl_s=policy.ttl_s)
            for command in expired:
                clear_command_alerts(uow, command, now)
            what = "report"
        case PurchaseAck():
            if _outstanding(commands, message.frame_seq, CommandKind.CREDIT) is None:
                return _unmatched(message.frame_seq, "purchase acknowledgement")
            claimed = unwrap_seq(message.applied_seq, applied_seq=link.applied_seq, highest_issued=_highest_sent(link, commands), modulus=link.seq_modulus)
            verdict = judge_claim(claimed, applied_seq=link.applied_seq, highest_issued=link.purchase_seq_issued)
            if verdict == ClaimVerdict.BEYOND_ISSUED:
                return _claims_unissued(uow, link, claimed, "acknowledgement", now)
            if verdict == ClaimVerdict.BACKWARDS:
                return MessageTaken("acknowledgement", ("SERIAL_BACKWARDS", f"acknowledgement says the meter has applied purchase #{claimed}; it had applied #{link.applied_seq}: not taken"))
            link.applied_seq = claimed
            link.credit_litres, link.credit_fen = message.credit_litres, message.credit_fen
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=None, at=now, source="acknowledged")
            what = "purchase acknowledged"
        case PurchaseRecord():
            return MessageTaken("purchase record", ("UNSOLICITED_REPLY", f"a purchase record (frame serial {message.frame_seq}) gasworks never asked for: nothing settled"))
        case ValveAck():
            if _outstanding(commands, message.frame_seq, CommandKind.VALVE_OPEN, CommandKind.VALVE_CLOSE) is None:
                return _unmatched(message.frame_seq, "valve acknowledgement")
            link.valve_open = message.valve_open
            settled = settle_by_meter(commands, applied_seq=link.applied_seq, valve_open=message.valve_open, at=now, source="acknowledged")
            what = "valve acknowledged"
        case CommandRefused():
            taken = _take_refusal(message, link, commands, uow, policy, now)
            if taken.refusal is not None:
                return taken
            what = taken.what
        case _:
            what = "ignored"
    if any(c.kind == CommandKind.CREDIT for c in settled):
        link.valve_reasons = clear_by_top_up(link.valve_reasons, credit_litres=link.credit_litres)
    for command in settled:
        if command.kind == CommandKind.CREDIT:
            book_applied(uow, command, now)
        else:
            clear_command_alerts(uow, command, now)
    _keep_valve_right(link, commands, uow, policy, now)
    return MessageTaken(what, rewound_ids=rewound_ids)


def _highest_sent(link: MeterLink, commands: list[MeterCommand]) -> int:
    """The highest purchase serial ever put on the wire to this meter: no truthful claim goes beyond
    it, so a one-byte serial is unwrapped within [applied, highest sent] (one or two serials wide,
    as purchases go one at a time), not up to the highest issued, which may be hundreds ahead."""
    sent = [c.purchase_seq for c in commands if c.kind == CommandKind.CREDIT and c.sends > 0 and c.purchase_seq is not None]
    return max([link.applied_seq, *sent])


def _outstanding(commands: list[MeterCommand], frame_seq: int, *kinds: CommandKind) -> MeterCommand | None:
    """The command a reply answers: sent, of its kind, with the frame serial the reply repeats."""
    answerable = (CommandState.SENT, CommandState.DELIVERED, *STOPPED_STATES)
    return next((c for c in commands if c.kind in kinds and c.sends > 0 and c.state in answerable and c.frame_seq == frame_seq), None)


def _unmatched(frame_seq: int, what: str) -> MessageTaken:
    return MessageTaken(what, ("UNMATCHED_REPLY", f"{what} with frame serial {frame_seq} answers no command in flight: nothing settled"))


def _claims_unissued(uow: UnitOfWork, link: MeterLink, claimed: int, source: str, now: datetime) -> MessageTaken:
    """Nothing from outside is believed beyond what we issued: the claim settles nothing, books
    nothing, and a person must look (`gasworks check` lists it until then)."""
    reason = f"meter {link.serial} claims purchase #{claimed}; highest issued #{link.purchase_seq_issued} (in a {source}): nothing settled"
    uow.alerts.raise_once(kind=AlertKind.METER_CLAIMS_UNISSUED, subject=f"meter:{link.serial}", reason=reason, at=now)
    log.warning("meter_claims_unissued", meter=link.serial, claimed=claimed, issued=link.purchase_seq_issued, source=source)
    return MessageTaken(source, ("SERIAL_NOT_ISSUED", reason))


def _take_report(report: CurrentData, link: MeterLink, uow: UnitOfWork, now: datetime, policy: DeliveryPolicy, *, claimed: int, backwards: bool) -> None:
    if backwards:  # a newer report with a lower serial: the meter was reset or replaced, or lies
        uow.alerts.raise_once(
            kind=AlertKind.METER_SEQUENCE_BACKWARDS, subject=f"meter:{link.serial}",
            reason=f"meter reports last purchase #{claimed} in a newer report, it had applied #{link.applied_seq}: replaced or reset meter?", at=now,
        )  # fmt: skip
    else:
        link.applied_seq = claimed
    link.last_report_clock = report.meter_clock
    link.last_report_at = now
    link.awake_until = now + timedelta(seconds=policy.wake_window_s)
    if link.link_state == LinkState.OFFLINE:
        uow.alerts.clear(kind=AlertKind.METER_OFFLINE, subject=f"meter:{link.serial}", at=now)
    link.link_state = LinkState.ONLINE
    link.credit_litres, link.credit_fen = report.credit_litres, report.credit_fen  # a money meter: litres unknown, it keeps its own valve
    link.cumulative_litres = report.cumulative_litres
    link.valve_open = report.valve_open
    link.battery_mv = report.battery_mv
    _take_alarms(report, link, uow, now)


def _take_alarms(report: CurrentData, link: MeterLink, uow: UnitOfWork, now: datetime) -> None:
    before, link.alarms = Alarm(link.alarms), int(report.alarms)
    for alarm in Alarm:  # only changes touch the alerts table: a daily report is one row's worth of work
        if alarm in report.alarms and alarm not in before:
            uow.alerts.raise_once(kind=AlertKind.for_alarm(str(alarm.name)), subject=f"meter:{link.serial}", reason=f"meter {link.serial} reports {flag_name(alarm).replace('_', ' ')}", at=now)
        elif alarm in before and alarm not in report.alarms:
            uow.alerts.clear(kind=AlertKind.for_alarm(str(alarm.name)), subject=f"meter:{link.serial}", at=now)
    if report.alarms & LEAK_OR_TAMPER_ALARMS and not link.valve_reasons & ValveReason.LEAK_OR_TAMPER:
        _add_valve_reason(uow, link, ValveReason.LEAK_OR_TAMPER, f"meter reports {', '.join(flag_name(a) for a in Alarm if a in report.alarms & LEAK_OR_TAMPER_ALARMS)}", now)


def _add_valve_reason(uow: UnitOfWork, link: MeterLink, reason: ValveReason, why: str, now: datetime) -> None:
    link.valve_reasons |= reason
    if reason & SAFETY_REASONS:
        uow.alerts.raise_once(
            kind=AlertKind.VALVE_CLOSED_FOR_SAFETY, subject=f"meter:{link.serial}",
            reason=f"meter {link.serial}: gas closed for safety ({why}); it reopens only after {ClearedBy.TECHNICIAN.value}", at=now,
        )  # fmt: skip


def _take_refusal(refusal: CommandRefused, link: MeterLink, commands: list[MeterCommand], uow: UnitOfWork, policy: DeliveryPolicy, now: datetime) -> MessageTaken:
    di_of = {CommandKind.CREDIT: DI_WRITE_PURCHASE, CommandKind.VALVE_OPEN: DI_VALVE, CommandKind.VALVE_CLOSE: DI_VALVE}
    in_flight = next((c for c in commands if c.state == CommandState.SENT and di_of[c.kind] == refusal.refused_di and c.frame_seq == refusal.frame_seq), None)
    if in_flight is None:
        return _unmatched(refusal.frame_seq, f"refusal ({refusal.error.name})")
    if refusal.error == MeterErrorCode.BUSY:  # not a no: the same frame again after a backoff, within this wake
        wait = policy.ack_wait(in_flight.window_sends)
        in_flight.next_send_at = now + wait
        in_flight.move_to(CommandState.SENT, now, f"the meter is busy: sent again in {int(wait.total_seconds())} s")
        return MessageTaken("meter busy")
    in_flight.move_to(CommandState.FAILED, now, f"the meter refused it: {refusal.error.name}")
    uow.alerts.raise_once(
        kind=AlertKind.COMMAND_REFUSED, subject=f"command:{in_flight.id}",
        reason=f"meter {link.serial} refused {in_flight.kind} #{in_flight.id} ({refusal.error.name}); reissue or cancel it", at=now,
    )  # fmt: skip
    return MessageTaken(f"command refused: {refusal.error.name}")


def clear_command_alerts(uow: UnitOfWork, command: MeterCommand, at: datetime) -> None:
    """A command settled, sent again or cancelled is no longer late or expired."""
    for kind in (AlertKind.PURCHASE_NOT_APPLIED, AlertKind.COMMAND_EXPIRED, AlertKind.COMMAND_REFUSED):
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
    """Closed while any reason is left (credit below minus the overdraft, arrears, leak or tamper,
    hazard stop, operator); reopened when none is, after the credit is back; never reopened
    remotely on a safety alarm or for a meter that needs the resident's button."""
    open_kinds = {c.kind for c in commands if c.is_open}
    credit_on_its_way = CommandKind.CREDIT in open_kinds
    if link.credit_litres is not None and credit_past_overdraft(link.credit_litres, policy) and not credit_on_its_way:
        link.valve_reasons |= ValveReason.CREDIT
    reasons = ValveReason(link.valve_reasons)
    unwanted = CommandKind.VALVE_OPEN if reasons else CommandKind.VALVE_CLOSE
    for command in commands:  # a command not sent yet that no longer agrees with the reasons goes
        if command.kind == unwanted and command.state == CommandState.PENDING:
            command.move_to(CommandState.CANCELLED, now, f"not reopened: {', '.join(valve_reason_names(reasons))}" if reasons else "no reason is left to close the valve")
            open_kinds = {c.kind for c in commands if c.is_open}
    if link.valve_open is None or link.credit_litres is None:
        return
    if reasons:
        if link.valve_open and CommandKind.VALVE_CLOSE not in open_kinds:
            why = f"close the valve: {', '.join(valve_reason_names(reasons))}"
            if reasons & ValveReason.CREDIT:
                why += f" (credit {link.credit_litres} L is below the {policy.overdraft_litres} L overdraft)"
            _add_valve_command(uow, link, commands, open_=False, why=why, policy=policy, now=now)
        return
    if not link.valve_open and link.credit_litres > 0 and not credit_on_its_way and CommandKind.VALVE_OPEN not in open_kinds:
        if Alarm(link.alarms) & SAFETY_ALARMS or link.reopen_needs_button:
            return  # a person must reopen it: the timeline says so
        _add_valve_command(uow, link, commands, open_=True, why="credit is back and no reason is left: reopen the valve", policy=policy, now=now)


def _add_valve_command(uow: UnitOfWork, link: MeterLink, commands: list[MeterCommand], *, open_: bool, why: str, policy: DeliveryPolicy, now: datetime) -> None:
    command = valve_command(meter_serial=link.serial, account_no=link.account_no, open_=open_, at=now, ttl_s=policy.ttl_s, why=why)
    uow.meter_commands.add(command)
    uow.meter_commands.announce(link.serial)
    commands.append(command)


def record_frame_refusal(uow: UnitOfWork, serial: str, code: str, reason: str, payload: bytes) -> None:
    uow.rejections.add(
        at=uow.clock.now(), channel_id=METERS_CHANNEL, code=code, message=reason[:500], remote_addr="",
        request_summary={"topic_serial": serial[:20], "frame_hex": payload[:96].hex()},
    )  # fmt: skip


def count_frame_refusal(serial: str, code: str, reason: str) -> None:
    meter_frames_refused.labels(code=code).inc()
    log.warning("meter_frame_refused", topic_serial=serial, code=code, reason=reason)


def refuse_unreadable_frame(topic_serial: str, code: str, reason: str, raw: bytes, uow: UnitOfWork) -> UplinkOutcome:
    """A frame the edge could not read (MalformedFrame: structure or checksum): refused and recorded
    as every refused frame is, the frame kept as received."""
    return _refuse(uow, topic_serial, code, reason, raw)


def _refuse(uow: UnitOfWork, serial: str, code: str, reason: str, payload: bytes) -> UplinkOutcome:
    with uow:
        record_frame_refusal(uow, serial, code, reason, payload)
        uow.commit()
    count_frame_refusal(serial, code, reason)
    return UplinkOutcome(serial, False, f"{code}: {reason}")


# ---- sending to meters --------------------------------------------------------------------------


class Publisher:
    """What the dispatcher needs of a transport: hand one frame to one meter, or raise."""

    def publish(self, serial: str, payload: bytes) -> None: ...


def frame_for(command: MeterCommand, uow: UnitOfWork, seq_modulus: int | None = None, *, reserved: MeterFrameSecurity | None = None) -> bytes:
    """The command sealed for its meter (key, next downlink counter, MAC), in the caller's unit of work.
    `reserved`: the meter's downlink counter, taken already with others in one UPDATE."""
    frame_seq = command.frame_seq
    if command.kind == CommandKind.CREDIT:
        assert command.purchase_seq is not None and command.volume_litres is not None
        wire_seq = seq_on_wire(command.purchase_seq, seq_modulus)  # a one-byte model counts 254, 255, 0, 1 ...
        purchase = WritePurchase(command.meter_serial, frame_seq, wire_seq, command.volume_litres, amount_fen=command.cost_fen)
        return uow.frames.seal_downlink(purchase, uow, reserved=reserved)  # a money meter is written the amount, a volume meter the litres
    return uow.frames.seal_downlink(SetValve(command.meter_serial, frame_seq, command.kind == CommandKind.VALVE_OPEN), uow, reserved=reserved)


def dispatch_meter(serial: str, uow: UnitOfWork, publisher: Publisher) -> MeterCommand | None:
    """Send this meter the next thing it needs, if it is awake and nothing is in flight. Returns what was sent."""
    with uow:
        link = uow.meters.lock_if_free(serial)
        if link is None:
            return None  # another dispatcher has it
        sent = _send_next_commands([link], uow, publisher)
    return sent[0] if sent else None


def dispatch_due(uow: UnitOfWork, publisher: Publisher, *, batch_max: int) -> list[MeterCommand]:
    """One dispatcher pass: claim up to `batch_max` awake meters with a command due, skipping any
    another worker holds (FOR UPDATE SKIP LOCKED), and send each its next command, in one transaction.

    Several workers run this at once without sending a command twice: a meter is in one worker's
    batch or in none, and what was sent is recorded before its lock is let go. Returns what was sent.
    """
    if batch_max < 1:
        raise InvalidInput("a dispatch batch holds at least one meter", code="INVALID_BATCH")
    with uow:
        links = uow.meters.claim_awake_with_work(uow.clock.now(), batch_max)
        if not links:
            return []
        dispatch_batches.inc()
        return _send_next_commands(links, uow, publisher)


def _send_next_commands(links: list[MeterLink], uow: UnitOfWork, publisher: Publisher) -> list[MeterCommand]:
    """Inside the caller's unit of work, with `links` locked: the next command of each, sealed, published, recorded sent, committed.

    Every frame is handed to the transport before the commit (a resend is harmless, a lost send is
    not). The counters are taken first, for good, in one UPDATE (`reserve_downlink_counters`): a
    frame published by a transaction that then rolls back never lends its counter to another.
    If the transport fails half-way (no broker, window full), what went out is still recorded,
    then the error is raised; the rest wait for the next pass.
    """
    now, policy = uow.clock.now(), uow.delivery
    by_meter = uow.meter_commands.for_meters([link.serial for link in links], route=MeterKind.IOT)
    due: list[tuple[MeterLink, MeterCommand]] = []
    for link in links:
        step = next_step(by_meter.get(link.serial, []), awake_until=link.awake_until, now=now, policy=policy)
        if isinstance(step, Send):
            due.append((link, step.command))
    if not due:
        return []
    reserved = uow.meter_keys.reserve_downlink_counters(link.serial for link, _ in due)
    sent: list[MeterCommand] = []
    failure: Exception | None = None
    for link, command in due:
        try:
            frame = frame_for(command, uow, link.seq_modulus, reserved=reserved.get(link.serial))
        except FrameNotSealed as error:  # this meter only: no key; the others still go
            log.warning("meter_send_failed", meter=link.serial, reason=str(error))
            continue
        try:
            # A carrier platform's transport sends within this unit of work, so the command it
            # creates there is recorded with the send.
            publish_in = getattr(publisher, "publish_in", None)
            if publish_in is not None:
                publish_in(link.serial, frame, uow)
            else:
                publisher.publish(link.serial, frame)
        except Exception as error:  # noqa: BLE001 - re-raised below, after what already went out is recorded
            failure = error
            break
        mark_sent(command, at=now, policy=policy)
        sent.append(command)
    uow.meter_commands.save_many(sent, now)
    uow.commit()
    for command in sent:
        meter_commands_sent.labels(kind=command.kind.value).inc()
    if failure is not None:
        raise failure
    return sent


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
        offline_after_by_model = {m.name: policy.offline_after_for(m.report_interval_s) for m in uow.meter_models.list()}
        later = {name: now - timedelta(seconds=s) for name, s in offline_after_by_model.items() if s > policy.offline_after_s}
        silent = uow.meters.silent_since(now - timedelta(seconds=policy.offline_after_s), batch_max, cutoff_by_model=later)
    for serial in due:
        with uow_factory() as uow:
            now = uow.clock.now()
            if uow.meters.get(serial, lock=True) is None:
                continue
            commands = uow.meter_commands.for_meter(serial, route=MeterKind.IOT)
            for command in expire_due(commands, now):
                uow.meter_commands.save(command, now)
                uow.alerts.raise_once(kind=AlertKind.COMMAND_EXPIRED, subject=f"command:{command.id}", reason=f"{command.kind} #{command.id} for meter {serial}: {command.note}", at=now)
                expired += 1
            uow.commit()
    for serial in silent:
        with uow_factory() as uow:
            now = uow.clock.now()
            link = uow.meters.get(serial, lock=True)
            offline_after_s = offline_after_by_model.get(link.model or "", policy.offline_after_s) if link is not None else policy.offline_after_s
            if link is None or link.last_report_at is None or link.last_report_at >= now - timedelta(seconds=offline_after_s):
                continue
            link.link_state = LinkState.OFFLINE
            uow.meters.save(link)
            uow.alerts.raise_once(kind=AlertKind.METER_OFFLINE, subject=f"meter:{serial}", reason=f"meter {serial} silent since {link.last_report_at:%Y-%m-%d %H:%M} UTC", at=now)
            uow.commit()
            offline += 1
    with uow_factory() as uow:
        now = uow.clock.now()
        late = uow.meter_commands.open_iot_credits_older_than(now - timedelta(seconds=policy.iot_applied_within_s), batch_max)
        last_reports = uow.meters.last_reports([order.meter_serial for order in late])
        for order in late:
            last_report_at = last_reports.get(order.meter_serial)
            # The service level runs from the meter's first report after the purchase.
            if last_report_at is None or last_report_at < order.created_at:
                continue
            if now - last_report_at < timedelta(seconds=policy.iot_applied_within_s):
                continue
            if uow.alerts.raise_once(
                kind=AlertKind.PURCHASE_NOT_APPLIED, subject=f"command:{order.id}",
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


# ---- the valve, meter models and alerts: people's decisions, each audited ----------------------


def _meter_for_operator(uow: UnitOfWork, serial: str) -> MeterLink:
    link = uow.meters.get(serial, lock=True)
    if link is None:
        raise NotFound(f"no meter {serial[:20]!r}", code="METER_NOT_FOUND")
    return link


def _valve_reason(name: str) -> ValveReason:
    try:
        return ValveReason[name.strip().upper()]
    except KeyError:
        raise InvalidInput(f"valve reason must be one of {', '.join(valve_reason_names(~ValveReason(0)))}", code="INVALID_VALVE_REASON") from None


def close_valve(serial: str, reason_name: str, uow: UnitOfWork, *, actor: str, note: str) -> MeterLink:
    """An operator closes a meter's valve for arrears, a hazard stop or another reason in words.
    It stays closed until that reason is cleared (a hazard stop: by a technician's resolution)."""
    reason = _valve_reason(reason_name)
    if not reason & OPERATOR_CLOSE_REASONS:
        raise InvalidInput(f"an operator closes a valve for {', '.join(valve_reason_names(OPERATOR_CLOSE_REASONS))}", code="INVALID_VALVE_REASON")
    with uow:
        now = uow.clock.now()
        link = _meter_for_operator(uow, serial)
        if link.kind != MeterKind.IOT:
            raise Conflict(f"meter {serial} is a card meter: its valve is not remote", code="NO_REMOTE_VALVE")
        _add_valve_reason(uow, link, reason, f"{flag_name(reason)}: {note.strip()[:120]}", now)
        commands = uow.meter_commands.for_meter(link.serial, states=OPEN_STATES | STOPPED_STATES, route=MeterKind.IOT)
        open_kinds = {c.kind for c in commands if c.is_open}
        for command in commands:
            if command.kind == CommandKind.VALVE_OPEN and command.state == CommandState.PENDING:
                command.move_to(CommandState.CANCELLED, now, f"not reopened: closed by {actor} ({flag_name(reason)})")
                uow.meter_commands.save(command, now)
        if link.valve_open is not False and CommandKind.VALVE_CLOSE not in open_kinds:
            why = f"closed by {actor}: {flag_name(reason)}: {note.strip()[:120]}"
            _add_valve_command(uow, link, commands, open_=False, why=why, policy=uow.delivery, now=now)
        uow.meters.save(link)
        uow.audit.append(at=now, actor=actor, action="valve.close", subject=f"meter:{serial}", detail={"reason": flag_name(reason), "note": note.strip()[:200]})
        uow.commit()
        return link


def resolve_valve_reason(serial: str, reason_name: str, uow: UnitOfWork, *, actor: str, note: str) -> MeterLink:
    """A person's recorded resolution of one reason the valve is closed: a technician's for a leak,
    tampering or a hazard stop; an operator's for arrears or their own close. The credit reason is
    cleared only by gas bought. The valve reopens when no reason is left."""
    reason = _valve_reason(reason_name)
    if reason & ValveReason.CREDIT:
        raise Conflict("the credit reason is cleared by a top-up, not by a person", code="CLEARED_BY_TOP_UP")
    with uow:
        now = uow.clock.now()
        link = _meter_for_operator(uow, serial)
        if not link.valve_reasons & reason:
            raise Conflict(f"meter {serial}'s valve is not closed for {flag_name(reason)} (reasons: {', '.join(valve_reason_names(link.valve_reasons)) or 'none'})", code="VALVE_REASON_NOT_SET")
        if reason & ValveReason.LEAK_OR_TAMPER and Alarm(link.alarms) & LEAK_OR_TAMPER_ALARMS:
            raise Conflict(f"meter {serial} still reports {', '.join(flag_name(a) for a in Alarm if a in Alarm(link.alarms) & LEAK_OR_TAMPER_ALARMS)}: resolve it after a report without it", code="METER_STILL_ALARMED")
        link.valve_reasons = clear_by_person(link.valve_reasons, reason)
        if not link.valve_reasons & SAFETY_REASONS:
            uow.alerts.clear(kind=AlertKind.VALVE_CLOSED_FOR_SAFETY, subject=f"meter:{serial}", at=now, resolved_by=actor, resolution=note.strip())
        commands = uow.meter_commands.for_meter(link.serial, states=OPEN_STATES | STOPPED_STATES, route=MeterKind.IOT)
        if link.kind == MeterKind.IOT:
            _keep_valve_right(link, commands, uow, uow.delivery, now)
        for command in commands:
            if command.events:
                uow.meter_commands.save(command, now)
        uow.meters.save(link)
        uow.audit.append(at=now, actor=actor, action="valve.resolve", subject=f"meter:{serial}", detail={"reason": flag_name(reason), "note": note.strip()[:200]})
        uow.commit()
        return link


def add_meter_model(model: MeterModel, uow: UnitOfWork, *, actor: str) -> MeterModel:
    """A new meter model profile. Profiles are never edited but for the button setting: a meter's
    frames, serial width and unit are what its firmware does, fixed when it was made."""
    model.check()
    with uow:
        now = uow.clock.now()
        if not uow.meter_models.add(model, now):
            raise Conflict(f"meter model {model.name!r} exists already", code="METER_MODEL_EXISTS")
        detail = {k: (v.value if hasattr(v, "value") else v) for k, v in model.__dict__.items()}
        uow.audit.append(at=now, actor=actor, action="meter_model.add", subject=f"meter_model:{model.name}", detail=detail)
        uow.commit()
        return model


def set_model_reopen_needs_button(name: str, value: bool, uow: UnitOfWork, *, actor: str) -> int:
    """Every meter of this model (now and later) needs, or no longer needs, the resident's button to
    reopen; a single meter can still be set otherwise afterwards. Returns the meters changed."""
    with uow:
        now = uow.clock.now()
        if uow.meter_models.get(name) is None:
            raise NotFound(f"no meter model {name[:40]!r}", code="METER_MODEL_NOT_FOUND")
        uow.meter_models.set_reopen_needs_button(name, value)
        changed = uow.meters.set_reopen_needs_button(model=name, value=value)
        uow.audit.append(at=now, actor=actor, action="meter_model.reopen_needs_button", subject=f"meter_model:{name}", detail={"value": value, "meters": changed})
        uow.commit()
        return changed


def set_meter(serial: str, uow: UnitOfWork, *, actor: str, model: str | None = None, reopen_needs_button: bool | None = None) -> MeterLink:
    """A meter's model (its serial width; the model's button setting comes with it) and whether
    its valve needs the resident's button to reopen."""
    if model is None and reopen_needs_button is None:
        raise InvalidInput("nothing to set: give a model or reopen_needs_button", code="NOTHING_TO_SET")
    with uow:
        now = uow.clock.now()
        link = _meter_for_operator(uow, serial)
        if model is not None:
            found = uow.meter_models.get(model)
            if found is None:
                raise NotFound(f"no meter model {model[:40]!r}", code="METER_MODEL_NOT_FOUND")
            security = uow.meter_keys.get_security(serial, lock=True)
            if security is not None and security.profile.mac_scheme != found.mac_scheme:
                raise Conflict(
                    f"meter {serial} is keyed for {security.profile.mac_scheme}; model {found.name} uses {found.mac_scheme}: a meter does not change its MAC scheme by a setting",
                    code="MODEL_CHANGES_MAC_SCHEME",
                )
            link.model, link.seq_modulus, link.reopen_needs_button = found.name, found.seq_modulus, found.reopen_needs_button
        if reopen_needs_button is not None:
            link.reopen_needs_button = reopen_needs_button
        uow.meters.save(link)
        uow.audit.append(at=now, actor=actor, action="meter.set", subject=f"meter:{serial}", detail={"model": model, "reopen_needs_button": reopen_needs_button})
        uow.commit()
        return link


def resolve_alert(alert_id: int, uow: UnitOfWork, *, actor: str, note: str) -> Alert:
    """A person's recorded resolution closes an alert that only a person can close."""
    with uow:
        now = uow.clock.now()
        alert = uow.alerts.get(alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id}", code="ALERT_NOT_FOUND")
        if alert.cleared_at is not None:
            raise Conflict(f"alert {alert_id} was cleared at {alert.cleared_at:%Y-%m-%d %H:%M} UTC", code="ALERT_NOT_OPEN")
        try:
            cleared_by = AlertKind(alert.kind).cleared_by
        except ValueError:
            cleared_by = ClearedBy.PERSON
        if cleared_by != ClearedBy.PERSON:
            raise Conflict(f"a {alert.kind} alert is cleared by {cleared_by.value}", code="NOT_CLEARED_BY_A_PERSON")
        uow.alerts.clear(kind=alert.kind, subject=alert.subject, at=now, resolved_by=actor, resolution=note.strip())
        uow.audit.append(at=now, actor=actor, action="alert.resolve", subject=f"alert:{alert_id}", detail={"kind": alert.kind, "subject": alert.subject, "note": note.strip()[:200]})
        resolved = uow.alerts.get(alert_id)
        assert resolved is not None, "read back in the transaction that cleared it"
        uow.commit()
        return resolved


# ---- read-only views for the API and CLI: one unit of work each, nothing committed -------------


@dataclass(frozen=True)
class MeterView:
    """A meter's link and its open commands, read in one transaction."""

    link: MeterLink
    commands: list[MeterCommand]


def get_meter(serial: str, uow: UnitOfWork) -> MeterView:
    with uow:
        link = uow.meters.get(serial)
        if link is None:
            raise NotFound(f"no meter {serial[:20]!r}", code="METER_NOT_FOUND")
        return MeterView(link, uow.meter_commands.for_meter(serial))


def list_commands(uow: UnitOfWork, *, limit: int, states: list[CommandState] | None = None, serial: str | None = None) -> list[MeterCommand]:
    """Meter commands, newest first."""
    with uow:
        return uow.meter_commands.recent(limit=limit, states=states, serial=serial)


def get_command(command_id: int, uow: UnitOfWork) -> MeterCommand:
    with uow:
        command = uow.meter_commands.get(command_id)
    if command is None:
        raise NotFound(f"no meter command {command_id}", code="COMMAND_NOT_FOUND")
    return command


def list_alerts(uow: UnitOfWork, *, limit: int, open_only: bool = True, subject: str | None = None) -> list[Alert]:
    with uow:
        return uow.alerts.list(limit=limit, open_only=open_only, subject=subject)


def list_meter_models(uow: UnitOfWork) -> list[MeterModel]:
    with uow:
        return uow.meter_models.list()


def meter_models_in_use(uow: UnitOfWork) -> tuple[list[MeterModel], dict[str, int]]:
    """Every meter model profile, and how many meters use each (by model name)."""
    with uow:
        return uow.meter_models.list(), uow.meter_models.count_meters()


def get_meter_model(name: str, uow: UnitOfWork) -> MeterModel:
    with uow:
        model = uow.meter_models.get(name)
    if model is None:
        raise NotFound(f"no meter model {name[:40]!r}", code="METER_MODEL_NOT_FOUND")
    return model
