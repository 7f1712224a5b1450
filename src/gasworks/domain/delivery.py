"""Getting a purchase to the meter: credit orders, valve commands, and what decides their state.

A *meter command* is one thing gasworks needs a meter to do. A *credit order* is the command that
carries a purchase: its volume and its per-meter purchase serial `purchase_seq` (1, 2, 3 ... with no
gaps). A meter applies purchase n only when its last applied serial is n - 1; a replay of n is
acknowledged and not applied again. That is what makes retries safe: gasworks may send a credit
order many times, and the meter's answer (or its next report) says whether it was applied.

States, modelled on NB-IoT platforms' cached commands:

    pending --> sent --> delivered --> applied        (IoT: the meter acknowledged and applied it)
       |          `----------------------^            (its next report shows it applied)
       `--> written_to_card --> applied               (card: written at a kiosk, then the card
                  `--> pending                          came back showing the meter applied it;
                                                        back to pending if the card was replaced)
    pending/sent --> failed | expired   --> pending (reissued by an operator; an expired purchase
                                            also by the meter's next report) or applied (the meter
                                            says it got it after all); pending/failed/expired
                                            --> cancelled (valve commands only).

"No acknowledgement" never means "not received": a sent command stays sent until the meter's next
report tells, by its last applied serial or its valve state, whether it arrived.
"""

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntFlag, StrEnum

from gasworks.domain.accounts import CustomerClass, MeterKind
from gasworks.domain.errors import InvariantViolated
from gasworks.domain.meter_models import MeterModel as MeterModel  # re-exported: the profile lives in meter_models


class LinkState(StrEnum):
    UNKNOWN = "unknown"  # never heard from
    ONLINE = "online"
    OFFLINE = "offline"  # silent longer than the policy allows


@dataclass
class MeterLink:
    """What gasworks knows of one meter's delivery side: serials issued and applied, last report."""

    serial: str
    account_no: str
    kind: MeterKind
    purchase_seq_issued: int = 0
    tier_year: int | None = None
    litres_bought_tier_year: int = 0
    applied_seq: int = 0
    last_report_at: datetime | None = None
    awake_until: datetime | None = None
    link_state: LinkState = LinkState.UNKNOWN
    credit_litres: int | None = None  # None for a money meter, whose balance is money (credit_fen)
    cumulative_litres: int | None = None
    valve_open: bool | None = None
    battery_mv: int | None = None
    alarms: int = 0
    reopen_needs_button: bool = False
    card_no: str | None = None
    card_purchase_seq: int = 0
    model: str | None = None  # the meter model (see MeterModel); None: a plain model with 4-byte serials
    seq_modulus: int | None = None  # from the model: 256 when its purchase serial is one byte; None: no wrap
    last_report_clock: datetime | None = None  # the meter's own clock in the newest report taken (naive)
    last_report_counter: int | None = None  # its uplink frame counter, when frames are sealed
    valve_reasons: int = 0  # ValveReason bits: why gasworks wants this meter's valve closed
    credit_fen: int | None = None  # a money meter's balance as it last reported it (negative on overdraft)


@dataclass(frozen=True)
class PurchaseSite:
    """An account's meter, locked for a purchase, with what buying gas needs read in the same go:
    the customer's class (its tariff), its prepaid account's cached entries sum (a balance of 100
    fen is -100) and how many commands already wait for the meter."""

    link: MeterLink
    customer_class: CustomerClass
    prepaid_entries_sum_fen: int
    open_commands: int


# ---- what a meter may claim ---------------------------------------------------------------------

SEQ_BACKWARDS_WINDOW = 128  # a one-byte serial up to 128 behind what was applied reads as "backwards"


def seq_on_wire(purchase_seq: int, modulus: int | None) -> int:
    """The purchase serial as this model's firmware carries it."""
    return purchase_seq if modulus is None else purchase_seq % modulus


def unwrap_seq(wire_seq: int, *, applied_seq: int, highest_issued: int, modulus: int | None) -> int:
    """The full purchase serial a meter means by `wire_seq`.

    A model whose serial is one byte counts 254, 255, 0, 1 ... A meter applies purchases in order,
    so what it can truthfully claim lies between what it had applied and the highest issued: the
    serial meant is the *lowest* one from `applied_seq` up with that remainder. Read that way a
    claim is never taken as further along than the meter can be (with 256 or more purchases
    outstanding the meter's byte is ambiguous to the meter itself; reading low leaves gas owed,
    never gas given twice). A remainder that lands beyond the highest issued is read as up to
    SEQ_BACKWARDS_WINDOW behind `applied_seq` (an old frame, a reset meter) if it can be, else as
    beyond what was issued; both are then refused by `judge_claim`.
    """
    if modulus is None:
        return wire_seq
    if not 0 <= wire_seq < modulus:
        return highest_issued + modulus  # no firmware of this model can say it: beyond anything issued
    ahead = (wire_seq - applied_seq) % modulus
    if applied_seq + ahead <= highest_issued:
        return applied_seq + ahead
    behind = modulus - ahead
    if behind <= SEQ_BACKWARDS_WINDOW and applied_seq - behind >= 0:
        return applied_seq - behind
    return applied_seq + ahead


class ClaimVerdict(StrEnum):
    IN_RANGE = "in_range"  # at or above what it had applied, at or below what was issued: believed
    BEYOND_ISSUED = "beyond_issued"  # a purchase gasworks never issued: forged, or another meter's
    BACKWARDS = "backwards"  # below what it had applied: reset or replaced meter, or an old frame


def judge_claim(claimed_seq: int, *, applied_seq: int, highest_issued: int) -> ClaimVerdict:
    """Nothing from outside is believed beyond what we issued, and a meter does not un-apply gas."""
    if claimed_seq > highest_issued:
        return ClaimVerdict.BEYOND_ISSUED
    if claimed_seq < applied_seq:
        return ClaimVerdict.BACKWARDS
    return ClaimVerdict.IN_RANGE


@dataclass(frozen=True)
class ReportKey:
    """What orders one meter's reports in time: the meter's clock now; its frame counter when frames
    carry one (then the counter decides, the clock only between reports without one)."""

    meter_clock: datetime
    counter: int | None = None


class ReportOrder(StrEnum):
    OLDER = "older"
    SAME = "same"
    NEWER = "newer"


def report_order(report: ReportKey, newest_taken: ReportKey | None) -> ReportOrder:
    """Where a report stands against the newest one taken for its meter: the one comparison.
    An older report is not news: it changes nothing. The same moment again is a duplicate."""
    if newest_taken is None:
        return ReportOrder.NEWER
    if report.counter is not None and newest_taken.counter is None:
        return ReportOrder.NEWER  # the first sealed report: the frame check proved it fresh; an old clock must not veto it
    if report.counter is not None and newest_taken.counter is not None:
        mine, theirs = report.counter, newest_taken.counter
    else:
        mine, theirs = report.meter_clock, newest_taken.meter_clock  # type: ignore[assignment]
    if mine < theirs:
        return ReportOrder.OLDER
    return ReportOrder.SAME if mine == theirs else ReportOrder.NEWER


# ---- the valve ---------------------------------------------------------------------------------


class ValveReason(IntFlag):
    """Why gasworks wants a meter's valve closed. The valve reopens only when none is left."""

    CREDIT = 0x01  # credit below minus the overdraft
    ARREARS = 0x02  # the account owes money (an operator's close)
    LEAK_OR_TAMPER = 0x04  # the meter reported a leak, tampering or a magnetic attack
    HAZARD_STOP = 0x08  # an operator stopped gas for a hazard (works on the main, a gas smell nearby)
    OPERATOR = 0x10  # an operator closed it for another reason, in words in the audit log


CLEARED_BY_TOP_UP = ValveReason.CREDIT | ValveReason.ARREARS
CLEARED_BY_TECHNICIAN = ValveReason.LEAK_OR_TAMPER | ValveReason.HAZARD_STOP
SAFETY_REASONS = CLEARED_BY_TECHNICIAN
OPERATOR_CLOSE_REASONS = ValveReason.ARREARS | ValveReason.HAZARD_STOP | ValveReason.OPERATOR


def flag_name(flag: enum.Flag) -> str:
    """A single flag's name as people read it ("leak_or_tamper"); the enum types it Optional for combined flags."""
    return str(flag.name).lower()


def valve_reason_names(reasons: int) -> list[str]:
    return [flag_name(r) for r in ValveReason if r & reasons]


def credit_past_overdraft(credit_litres: int, policy: "DeliveryPolicy") -> bool:
    """The one valve threshold: credit *below* minus the overdraft closes the valve; at it, not yet."""
    return credit_litres < -policy.overdraft_litres


def clear_by_top_up(reasons: int, *, credit_litres: int | None) -> int:
    """A purchase applied clears arrears, and the credit reason once the credit is above zero again.
    Nothing else: a leak or a hazard stop waits for a technician."""
    cleared = ValveReason.ARREARS
    if credit_litres is not None and credit_litres > 0:
        cleared |= ValveReason.CREDIT
    return reasons & ~cleared


def clear_by_person(reasons: int, reason: ValveReason) -> int:
    """A person's recorded resolution clears one reason. The credit reason is cleared only by gas
    bought: refused here."""
    if reason & ValveReason.CREDIT:
        raise InvariantViolated("the credit reason is cleared by a top-up, not by a person")
    return reasons & ~reason


# ---- alerts ------------------------------------------------------------------------------------


class ClearedBy(StrEnum):
    NEWER_REPORT = "a newer report from the meter that no longer shows it"
    DELIVERY = "the command applied, reissued or cancelled"
    PERSON = "a person's recorded resolution (POST /v1/alerts/{id}/resolution, gasworks alerts resolve)"
    TECHNICIAN = "a technician's recorded resolution on the meter (POST /v1/meters/{serial}/valve/resolutions, gasworks meters resolve)"


class AlertKind(StrEnum):
    """Every alert gasworks raises, each with what clears it."""

    NO_TARIFF = "NO_TARIFF"
    METER_BACKLOG = "METER_BACKLOG"
    METER_OFFLINE = "METER_OFFLINE"
    METER_SEQUENCE_BACKWARDS = "METER_SEQUENCE_BACKWARDS"  # a newer report with a lower serial: reset or replaced meter?
    METER_CLAIMS_UNISSUED = "METER_CLAIMS_UNISSUED"  # a report or acknowledgement claiming a purchase never issued
    COMMAND_EXPIRED = "COMMAND_EXPIRED"
    COMMAND_REFUSED = "COMMAND_REFUSED"
    PURCHASE_NOT_APPLIED = "PURCHASE_NOT_APPLIED"
    CARD_COUNTER_AHEAD = "CARD_COUNTER_AHEAD"
    VALVE_CLOSED_FOR_SAFETY = "VALVE_CLOSED_FOR_SAFETY"
    METER_VALVE_FAULT = "METER_VALVE_FAULT"
    METER_LOW_BATTERY = "METER_LOW_BATTERY"
    METER_LEAK = "METER_LEAK"
    METER_TAMPER = "METER_TAMPER"
    METER_MAGNETIC_ATTACK = "METER_MAGNETIC_ATTACK"
    METER_CREDIT_LOW = "METER_CREDIT_LOW"
    METER_CREDIT_EXHAUSTED = "METER_CREDIT_EXHAUSTED"
    # Calling the channels (services/outbound.py): each names its job; a person resolves it.
    CHANNEL_CALL_FAILING = "CHANNEL_CALL_FAILING"  # a query, refund or statement call keeps failing
    REFUND_NOT_PAID = "REFUND_NOT_PAID"  # the channel closed the refund or could not pay it (CLOSED / ABNORMAL)
    STATEMENT_LATE = "STATEMENT_LATE"  # a day's statement not imported by the configured hour
    STATEMENT_HASH_MISMATCH = "STATEMENT_HASH_MISMATCH"  # the downloaded bill is not the one the channel vouched for

    @property
    def cleared_by(self) -> ClearedBy:
        return _CLEARED_BY.get(self, ClearedBy.NEWER_REPORT)

    @classmethod
    def for_alarm(cls, alarm_name: str) -> "AlertKind":
        return cls(f"METER_{alarm_name}")


_CLEARED_BY = {
    AlertKind.NO_TARIFF: ClearedBy.PERSON,
    AlertKind.METER_BACKLOG: ClearedBy.PERSON,
    AlertKind.METER_SEQUENCE_BACKWARDS: ClearedBy.PERSON,
    AlertKind.METER_CLAIMS_UNISSUED: ClearedBy.PERSON,
    AlertKind.CARD_COUNTER_AHEAD: ClearedBy.PERSON,
    AlertKind.COMMAND_EXPIRED: ClearedBy.DELIVERY,
    AlertKind.COMMAND_REFUSED: ClearedBy.DELIVERY,
    AlertKind.PURCHASE_NOT_APPLIED: ClearedBy.DELIVERY,
    AlertKind.VALVE_CLOSED_FOR_SAFETY: ClearedBy.TECHNICIAN,
    AlertKind.CHANNEL_CALL_FAILING: ClearedBy.PERSON,
    AlertKind.REFUND_NOT_PAID: ClearedBy.PERSON,
    AlertKind.STATEMENT_LATE: ClearedBy.PERSON,
    AlertKind.STATEMENT_HASH_MISMATCH: ClearedBy.PERSON,
}  # the rest (offline, the meter's own alarms) clear with a newer report


class CommandKind(StrEnum):
    CREDIT = "credit"
    VALVE_OPEN = "valve_open"
    VALVE_CLOSE = "valve_close"


class CommandState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    WRITTEN_TO_CARD = "written_to_card"
    APPLIED = "applied"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


_LEGAL: dict[CommandState, frozenset[CommandState]] = {
    CommandState.PENDING: frozenset({CommandState.SENT, CommandState.WRITTEN_TO_CARD, CommandState.APPLIED, CommandState.EXPIRED, CommandState.CANCELLED}),
    CommandState.SENT: frozenset({CommandState.SENT, CommandState.DELIVERED, CommandState.APPLIED, CommandState.FAILED, CommandState.EXPIRED}),
    # Delivered to the meter's module by a carrier platform; a later report without its serial sends it again.
    CommandState.DELIVERED: frozenset({CommandState.APPLIED, CommandState.SENT}),
    CommandState.WRITTEN_TO_CARD: frozenset({CommandState.APPLIED, CommandState.PENDING}),
    CommandState.FAILED: frozenset({CommandState.PENDING, CommandState.APPLIED, CommandState.CANCELLED}),
    CommandState.EXPIRED: frozenset({CommandState.PENDING, CommandState.APPLIED, CommandState.CANCELLED}),
    CommandState.APPLIED: frozenset(),
    CommandState.CANCELLED: frozenset(),
}

# Still on their way: the dispatcher, the card desk and the watchdog look at these.
OPEN_STATES = frozenset({CommandState.PENDING, CommandState.SENT, CommandState.DELIVERED, CommandState.WRITTEN_TO_CARD})
# Stopped, waiting for an operator; the meter's next word can still settle them.
STOPPED_STATES = frozenset({CommandState.FAILED, CommandState.EXPIRED})


def check_transition(current: CommandState, new: CommandState) -> None:
    if new not in _LEGAL[current]:
        raise InvariantViolated(f"illegal meter command transition {current} -> {new}")


@dataclass(frozen=True)
class CommandEvent:
    state: CommandState
    at: datetime
    note: str = ""


@dataclass
class MeterCommand:
    id: int | None
    meter_serial: str
    account_no: str
    kind: CommandKind
    route: MeterKind  # iot: over the meter transport; card: through a kiosk or counter
    state: CommandState
    created_at: datetime
    expires_at: datetime | None  # card purchases wait for the resident and do not expire
    payment_id: str | None = None
    purchase_seq: int | None = None
    volume_litres: int | None = None
    cost_fen: int | None = None
    sends: int = 0  # frames published, over the command's life
    window_sends: int = 0  # frames published since the meter last woke
    next_send_at: datetime | None = None
    note: str = ""  # the latest reason, in words, for people
    tier_pieces: tuple[tuple[int, int, int, int], ...] = ()  # (tier no, litres, cost fen, price)
    # Loaded to change it: `events` holds only events not yet saved and `events_saved` counts the
    # saved ones. Loaded to show it: `events` holds them all.
    events: list[CommandEvent] = field(default_factory=list)
    events_saved: int = 0

    def move_to(self, state: CommandState, at: datetime, note: str) -> None:
        check_transition(self.state, state)
        self.state = state
        self.note = note
        self.events.append(CommandEvent(state, at, note))

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def frame_seq(self) -> int:
        """The frame serial (CJ/T 188 SER) this command goes out with: the same on every resend."""
        return (self.id or 0) % 256

    @property
    def valve_target_open(self) -> bool | None:
        return {CommandKind.VALVE_OPEN: True, CommandKind.VALVE_CLOSE: False}.get(self.kind)


def credit_order(
    *,
    meter_serial: str,
    account_no: str,
    route: MeterKind,
    payment_id: str,
    purchase_seq: int,
    volume_litres: int,
    cost_fen: int,
    at: datetime,
    ttl_s: int,
) -> MeterCommand:
    if purchase_seq < 1 or volume_litres <= 0 or cost_fen <= 0:
        raise InvariantViolated(f"a credit order needs serial >= 1 and positive volume and cost: {purchase_seq}, {volume_litres}, {cost_fen}")
    command = MeterCommand(
        id=None,
        meter_serial=meter_serial,
        account_no=account_no,
        kind=CommandKind.CREDIT,
        route=route,
        state=CommandState.PENDING,
        created_at=at,
        expires_at=None if route == MeterKind.CARD else at + timedelta(seconds=ttl_s),
        payment_id=payment_id,
        purchase_seq=purchase_seq,
        volume_litres=volume_litres,
        cost_fen=cost_fen,
    )
    waiting = "waiting for the card to be written at a kiosk or counter" if route == MeterKind.CARD else "waiting for the meter to wake"
    command.events.append(CommandEvent(CommandState.PENDING, at, f"purchase #{purchase_seq}: {volume_litres} L, {waiting}"))
    command.note = waiting
    return command


def valve_command(*, meter_serial: str, account_no: str, open_: bool, at: datetime, ttl_s: int, why: str) -> MeterCommand:
    command = MeterCommand(
        id=None,
        meter_serial=meter_serial,
        account_no=account_no,
        kind=CommandKind.VALVE_OPEN if open_ else CommandKind.VALVE_CLOSE,
        route=MeterKind.IOT,
        state=CommandState.PENDING,
        created_at=at,
        expires_at=at + timedelta(seconds=ttl_s),
        note=why,
    )
    command.events.append(CommandEvent(CommandState.PENDING, at, why))
    return command


@dataclass(frozen=True)
class DeliveryPolicy:
    """Every bound of the delivery loop, named; built from Settings."""

    wake_window_s: int = 60  # an NB-IoT meter listens this long after it reports
    ack_wait_s: int = 8  # first wait for an acknowledgement; doubles on each resend
    ack_wait_s_max: int = 32
    sends_per_wake_max: int = 3  # then the next report decides
    ttl_s: int = 48 * 3600
    open_commands_per_meter_max: int = 20
    offline_after_s: int = 25 * 3600
    offline_margin_s: int = 3600  # a model reporting less often than daily is offline after its interval and this
    iot_applied_within_s: int = 600  # after the meter's next report
    overdraft_litres: int = 3_344  # about ¥10 at ¥2.99/m³: the meter closes its valve beyond this

    def offline_after_for(self, report_interval_s: int) -> int:
        """Silent this long, a meter of a model reporting every `report_interval_s` is offline: never
        sooner than `offline_after_s`, and a weekly reporter not before its week and the margin."""
        return max(self.offline_after_s, report_interval_s + self.offline_margin_s)

    def ack_wait(self, window_sends: int) -> timedelta:
        """Bounded exponential backoff: 8 s, 16 s, 32 s, 32 s ..."""
        return timedelta(seconds=min(self.ack_wait_s_max, self.ack_wait_s * 2 ** max(0, window_sends - 1)))


@dataclass(frozen=True)
class Send:
    command: MeterCommand


@dataclass(frozen=True)
class Wait:
    reason: str


def next_step(open_iot_commands: list[MeterCommand], *, awake_until: datetime | None, now: datetime, policy: DeliveryPolicy) -> Send | Wait | None:
    """What to send this meter now, one command at a time, in order; None when nothing is open."""
    if not open_iot_commands:
        return None
    if awake_until is None or awake_until <= now:
        return Wait("meter asleep: commands go when it next reports")
    in_flight = next((c for c in open_iot_commands if c.state in (CommandState.SENT, CommandState.DELIVERED)), None)
    if in_flight is not None:
        if in_flight.state == CommandState.DELIVERED and in_flight.window_sends > 0:
            return Wait("delivered to the meter's module by its carrier platform; the meter's own word decides")
        if in_flight.window_sends >= policy.sends_per_wake_max:
            return Wait(f"no acknowledgement after {in_flight.window_sends} sends; the meter's next report decides")
        if in_flight.next_send_at is not None and now < in_flight.next_send_at:
            return Wait("waiting for the meter's acknowledgement")
        return Send(in_flight)
    return Send(open_iot_commands[0])


def mark_sent(command: MeterCommand, *, at: datetime, policy: DeliveryPolicy) -> None:
    command.sends += 1
    command.window_sends += 1
    command.next_send_at = at + policy.ack_wait(command.window_sends)
    note = "sent to the meter" if command.sends == 1 else f"sent again (attempt {command.sends}), no acknowledgement yet"
    command.move_to(CommandState.SENT, at, note)


def settle_by_meter(commands: list[MeterCommand], *, applied_seq: int, valve_open: bool | None, at: datetime, source: str) -> list[MeterCommand]:
    """What the meter says it has applied settles every command it covers. Returns those settled."""
    settled = []
    for command in commands:
        if command.state not in OPEN_STATES | STOPPED_STATES or command.route != MeterKind.IOT:
            continue
        if command.kind == CommandKind.CREDIT:
            assert command.purchase_seq is not None
            done = command.purchase_seq <= applied_seq
            note = f"{source}: the meter has applied purchase #{applied_seq}"
        else:
            done = valve_open is not None and valve_open == command.valve_target_open
            note = f"{source}: the valve is {'open' if valve_open else 'closed'}"
        if done:
            if command.state == CommandState.SENT and source == "acknowledged":
                command.move_to(CommandState.DELIVERED, at, "the meter acknowledged the command")
            command.move_to(CommandState.APPLIED, at, note)
            settled.append(command)
    return settled


def revive_on_return(commands: list[MeterCommand], *, at: datetime, ttl_s: int) -> list[MeterCommand]:
    """The meter reported again after commands expired. A purchase is paid for: it goes back to
    pending with a fresh time to live. A valve command is stale: the valve policy decides afresh."""
    revived = []
    for command in commands:
        if command.state != CommandState.EXPIRED or command.route != MeterKind.IOT:
            continue
        if command.kind == CommandKind.CREDIT:
            command.move_to(CommandState.PENDING, at, "the meter is back after it expired: sent again")
            command.sends = command.window_sends = 0
            command.next_send_at = None
            command.expires_at = at + timedelta(seconds=ttl_s)
            revived.append(command)
        else:
            command.move_to(CommandState.CANCELLED, at, "expired while the meter was away; the valve is decided afresh")
    return revived


def new_wake_window(commands: list[MeterCommand]) -> None:
    """The meter woke: commands still in flight get a fresh allowance of sends."""
    for command in commands:
        command.window_sends = 0
        command.next_send_at = None


def expire_due(commands: list[MeterCommand], now: datetime) -> list[MeterCommand]:
    expired = []
    for command in commands:
        if command.state in (CommandState.PENDING, CommandState.SENT) and command.expires_at is not None and command.expires_at <= now:
            command.move_to(CommandState.EXPIRED, now, f"not applied within its time to live ({command.expires_at:%Y-%m-%d %H:%M} UTC); an operator must look")
            expired.append(command)
    return expired


@dataclass(frozen=True)
class CardState:
    """What a kiosk reads off a card: its purchase counter and what the meter wrote back."""

    card_purchase_seq: int  # the last purchase serial written to this card
    meter_applied_seq: int  # the last purchase serial the meter applied, as the meter wrote it back


def settle_by_card(orders: list[MeterCommand], card: CardState, at: datetime) -> list[MeterCommand]:
    """Reconcile the card orders with what the card shows. Returns the orders to write, in order."""
    to_write = []
    for order in sorted(orders, key=lambda o: o.purchase_seq or 0):
        assert order.purchase_seq is not None
        if order.state not in OPEN_STATES:
            continue
        if order.purchase_seq <= card.meter_applied_seq:
            if order.state == CommandState.PENDING:
                order.move_to(CommandState.WRITTEN_TO_CARD, at, "the card shows it was written")
            order.move_to(CommandState.APPLIED, at, f"the card came back: the meter has applied purchase #{card.meter_applied_seq}")
        elif order.purchase_seq <= card.card_purchase_seq:
            if order.state == CommandState.PENDING:
                order.move_to(CommandState.WRITTEN_TO_CARD, at, "the card shows it was written; insert the card in the meter")
        else:
            if order.state == CommandState.WRITTEN_TO_CARD:
                order.move_to(CommandState.PENDING, at, "the card does not carry it: it will be written again")
            to_write.append(order)
    return to_write


@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    subject: str
    reason: str
    raised_at: datetime
    cleared_at: datetime | None
    resolved_by: str | None = None
    resolution: str | None = None

    @property
    def cleared_by(self) -> str:
        """What clears an alert of this kind, in words."""
        try:
            return AlertKind(self.kind).cleared_by.value
        except ValueError:
            return "a person's recorded resolution"
