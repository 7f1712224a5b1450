"""What a simulated city proves: money in, gas out, how fast, what is stuck and why, faults caught.

Every figure comes from gasworks' own records (its database, through its repositories and
services), set against the simulator's ground truth (what the channels collected and what the
meters really applied). The money check must hold to the fen.
"""

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from gasworks.domain.ledger import LedgerAccountKind
from gasworks.domain.payments import PaymentState
from gasworks.services.checks import check_ledger
from gasworks.services.timeline import payment_timeline
from gasworks.sim.world import SimOutcome, Simulation


@dataclass(frozen=True)
class ChannelLine:
    channel_id: str
    collected: int
    collected_fen: int
    booked: int
    held: int
    never_reached: int
    never_reached_fen: int


@dataclass(frozen=True)
class LatencyLine:
    what: str
    n: int
    p50: timedelta | None
    p95: timedelta | None
    p99: timedelta | None


BUTTON_GOAL = timedelta(minutes=10)  # issue 14: IoT meters with a button press, payment -> gas, p95 within this


@dataclass(frozen=True)
class GasLine:
    """One group of meters (kind and model) and one path to gas, with how long it took."""

    kind: str  # iot | card
    model: str  # the meter model profile ("card" for card meters)
    how: str
    n: int
    p50: timedelta | None
    p95: timedelta | None
    p99: timedelta | None
    within_goal_of_press: int | None = None  # of n, gas within BUTTON_GOAL of the resident's button press


@dataclass(frozen=True)
class StuckLine:
    status: str
    reason: str
    n: int
    amount_fen: int


@dataclass(frozen=True)
class FaultLine:
    fault: str
    injected: int
    outcome: str


@dataclass(frozen=True)
class MoneyCheck:
    collected_fen: int  # what residents paid, per the channels
    reached_fen: int  # of which gasworks heard (booked or held)
    never_reached_fen: int  # paid at a channel, never notified: for reconciliation
    clearing_fen: int  # what gasworks says the channels owe it
    on_balances_fen: int
    in_delivery_fen: int  # bought, on its way to meters
    gas_applied_fen: int  # revenue: applied at meters
    suspense_fen: int
    refunds_in_flight_fen: int  # refunds gasworks asked a channel for, not yet paid back
    refunded_fen: int  # paid back by the channels on gasworks' request (their records)
    litres_applied_at_meters: int  # ground truth, summed over the simulated meters
    litres_proven_applied: int  # what gasworks has proof of (an acknowledgement, a report, a card back)
    meter_purchases_unknown_to_gasworks: int  # applied at a meter with no matching credit order: must be 0
    proven_but_not_at_meter: int  # gasworks says applied, the meter has not: must be 0
    ledger_findings: list[str]

    @property
    def holds(self) -> bool:
        return (
            self.collected_fen == self.reached_fen + self.never_reached_fen
            and self.reached_fen == self.clearing_fen + self.refunded_fen
            and self.clearing_fen == self.on_balances_fen + self.in_delivery_fen + self.gas_applied_fen + self.suspense_fen + self.refunds_in_flight_fen
            and self.meter_purchases_unknown_to_gasworks == 0
            and self.proven_but_not_at_meter == 0
            and self.litres_proven_applied <= self.litres_applied_at_meters
            and not self.ledger_findings
        )


@dataclass
class Report:
    days: int
    households: int
    iot_meters: int
    card_meters: int
    channels: list[ChannelLine]
    latency: list[LatencyLine]
    reached_gas: int
    booked_purchases: int
    stuck: list[StuckLine]
    faults: list[FaultLine]
    money: MoneyCheck
    truth_checks: int
    truth_violations: list[str]
    sample_payment_ids: dict[str, str] = field(default_factory=dict)
    without_gas: list[GasLine] = field(default_factory=list)  # valve closed -> gas again, by kind and model
    to_gas: list[GasLine] = field(default_factory=list)  # payment -> gas, by kind, model and path
    button_goal: GasLine | None = None  # every IoT payment on gasworks' own transport whose gas came after a button press, against BUTTON_GOAL
    button_carrier: GasLine | None = None  # the same behind a carrier platform: its module may sleep before gasworks answers

    @property
    def button_goal_met(self) -> bool | None:
        if self.button_goal is None or self.button_goal.p95 is None:
            return None
        return self.button_goal.p95 <= BUTTON_GOAL


def _percentiles(values: list[timedelta]) -> tuple[timedelta | None, timedelta | None, timedelta | None]:
    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], values[0], values[0]
    seconds = [v.total_seconds() for v in values]
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return tuple(timedelta(seconds=round(x)) for x in (q[49], q[94], q[98]))  # type: ignore[return-value]


def _gas_line(kind: str, model: str, how: str, spans: list[timedelta], within: int | None = None) -> GasLine:
    return GasLine(kind, model, how, len(spans), *_percentiles(spans), within_goal_of_press=within)


def time_without_gas(outcome: SimOutcome) -> list[GasLine]:
    """Valve closed (credit out, or closed by the meter) -> gas available again, by meter kind and model."""
    spells: dict[tuple[str, str], list[timedelta]] = defaultdict(list)
    for kind, model, span in outcome.gas_off_spells:
        spells[(kind, model)].append(span)
    still = Counter((kind, model) for kind, model, _ in outcome.still_without_gas)
    return [_gas_line(kind, model, f"valve closed → gas again ({still[(kind, model)]} still without gas at the end)", spans) for (kind, model), spans in sorted(spells.items())]


def payment_to_gas(sim: Simulation, outcome: SimOutcome, facts: list[dict]) -> tuple[list[GasLine], GasLine, GasLine | None]:
    """Paid -> gas at the meter, by kind, model and path: an IoT payment whose gas came after the
    resident pressed the meter's button counts as "button pressed", with the share of those whose
    gas came within BUTTON_GOAL of the press; the others waited for the meter's own report."""
    households = {h.serial: h for h in sim.city.households}
    groups: dict[tuple[str, str, str], list[timedelta]] = defaultdict(list)
    within: Counter = Counter()
    pressed_all: list[timedelta] = []
    pressed_within = 0
    carrier_pressed: list[timedelta] = []
    carrier_within = 0
    for f in facts:
        h = households.get(f["meter_serial"] or "")
        if h is None or f["applied_at"] is None:
            continue
        took = f["applied_at"] - f["paid_at"]
        if f["route"] == "card":
            groups[("card", "card", "card written at a kiosk, inserted")].append(took)
            continue
        press = next((at for at in outcome.button_presses.get(h.serial, []) if f["paid_at"] <= at <= f["applied_at"]), None)
        if press is None:
            how = WAITED
        elif press < f["received_at"]:
            how = PRESSED_TOO_EARLY  # the channel told gasworks after the press: nothing to send yet, the next report brings it
        elif press - f["paid_at"] <= timedelta(seconds=sim.habits.button_press_delay_s[1]):
            how = PAID_THEN_PRESSED
        else:
            how = PRESSED_LATER  # paid long before, the button pressed when the gas went off
        behind_carrier = sim.ctwing is not None and sim.ctwing.has(h.serial)
        key = ("iot", h.model_label + (" via CTWing" if behind_carrier else ""), how)
        groups[key].append(took)
        if press is not None and f["applied_at"] - press <= BUTTON_GOAL:
            within[key] += 1
        if how == PAID_THEN_PRESSED and behind_carrier:
            carrier_pressed.append(took)
            carrier_within += f["applied_at"] - press <= BUTTON_GOAL  # type: ignore[operator]
        elif how == PAID_THEN_PRESSED:
            pressed_all.append(took)
            pressed_within += f["applied_at"] - press <= BUTTON_GOAL  # type: ignore[operator]
    lines = [_gas_line(kind, model, how, spans, within[(kind, model, how)] if how in (PAID_THEN_PRESSED, PRESSED_LATER, PRESSED_TOO_EARLY) else None) for (kind, model, how), spans in sorted(groups.items())]
    carrier = _gas_line("iot", "via CTWing", PAID_THEN_PRESSED, carrier_pressed, carrier_within) if carrier_pressed else None
    return lines, _gas_line("iot", "all models", PAID_THEN_PRESSED, pressed_all, pressed_within), carrier


PAID_THEN_PRESSED = "paid, then pressed the button"
PRESSED_LATER = "pressed the button later"
PRESSED_TOO_EARLY = "pressed before the channel told gasworks"
WAITED = "waited for the meter's report"


def summarise(sim: Simulation, outcome: SimOutcome, *, hotline: str) -> Report:
    system = sim.system
    with system.new_uow() as uow:
        facts = uow.meter_commands.payment_deliveries()
        totals = uow.ledger.totals_by_kind()
        open_alerts = uow.alerts.count_open_by_kind()
        replaced_cards = uow.audit.count_actions("card.replace")
    ledger = check_ledger(system.new_uow())

    by_channel: dict[str, Counter] = defaultdict(Counter)
    for c in outcome.collected:
        line = by_channel[c.channel_id]
        line["collected"] += 1
        line["collected_fen"] += c.amount_fen
        if not c.reached_gasworks:
            line["never_reached"] += 1
            line["never_reached_fen"] += c.amount_fen
    for f in facts:
        by_channel[f["channel_id"]]["booked" if f["state"] == PaymentState.BOOKED else "held"] += 1
    channels = [ChannelLine(ch, n["collected"], n["collected_fen"], n["booked"], n["held"], n["never_reached"], n["never_reached_fen"]) for ch, n in sorted(by_channel.items())]

    iot_applied, card_written, card_applied = [], [], []
    for f in facts:
        if f["applied_at"] is not None:
            (iot_applied if f["route"] == "iot" else card_applied).append(f["applied_at"] - f["paid_at"])
        if f["route"] == "card" and f["written_at"] is not None:
            card_written.append(f["written_at"] - f["paid_at"])
    latency = [
        LatencyLine("IoT meter: paid → applied at the meter", len(iot_applied), *_percentiles(iot_applied)),
        LatencyLine("card meter: paid → written to the card", len(card_written), *_percentiles(card_written)),
        LatencyLine("card meter: paid → applied (card back at a kiosk)", len(card_applied), *_percentiles(card_applied)),
    ]

    stuck_groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for f in facts:
        if f["state"] == PaymentState.HELD:
            stuck_groups[("HELD", f"in suspense: {f['hold_reason']}")].append(f["amount_fen"])
        elif f["command_id"] is not None and f["applied_at"] is None:
            timeline = payment_timeline(f["payment_id"], system.new_uow(), hotline=hotline)
            stuck_groups[(timeline.status, _reason(timeline))].append(f["amount_fen"])
    for c in outcome.collected:
        if not c.reached_gasworks:
            stuck_groups[("NEVER_REACHED", f"{c.channel_id}: {c.fault or 'no notification'}; in its statement, for reconciliation")].append(c.amount_fen)
    stuck = sorted((StuckLine(s, r, len(v), sum(v)) for (s, r), v in stuck_groups.items()), key=lambda line: -line.n)

    reached = [c for c in outcome.collected if c.reached_gasworks]
    payments_per_txn = Counter((f["channel_id"], f["channel_txn_id"]) for f in facts)
    doubled = sum(1 for n in payments_per_txn.values() if n > 1)
    orders = {(f["meter_serial"], f["purchase_seq"]): f for f in facts if f["command_id"] is not None}
    # A meter applies purchases in order from #1 without gaps, so its n-th is purchase #n whatever its
    # firmware's serial width (a one-byte model counts 254, 255, 0, 1 ...). A money meter applies
    # money: its purchase matches when the fen match, and stands for the order's litres.
    at_meters: dict[tuple[str, int], int] = {}
    unknown = 0
    for h in sim.city.households:
        for n, (_, litres) in enumerate(h.meter.applied, start=1):
            order = orders.get((h.serial, n))
            if h.meter.is_money_meter:
                fen = h.meter.applied_fen[n - 1][1]
                matches = order is not None and order["cost_fen"] == fen
                at_meters[(h.serial, n)] = order["volume_litres"] if matches and order is not None else 0
            else:
                matches = order is not None and order["volume_litres"] == litres
                at_meters[(h.serial, n)] = litres
            unknown += not matches
    proven = {key for key, f in orders.items() if f["applied_at"] is not None}
    injected = outcome.faults_injected
    faults = [
        FaultLine("notification lost", injected["notification lost"], f"{outcome.recovered_by_query} booked by the worker asking the channel's platform (lost, and late past 10 min)"),
        FaultLine(
            "wallet success before booking (request lost)",
            injected["wallet success before booking (request lost)"],
            f"booked from the channel's statement, fetched by the worker the next morning ({outcome.booked_from_statements} payments in all were, these and notifications later than that)",
        ),  # fmt: skip
        FaultLine("notification duplicated", injected["notification duplicated"], f"booked once each ({doubled} booked twice)"),
        FaultLine("notification delayed (reordered)", injected["notification delayed (reordered)"], "booked when they came, in any order"),
        FaultLine("meter sleeps for days", injected["meter sleeps for days"], "purchases waited for the meter's next report"),
        FaultLine("meter acknowledgement lost", injected["meter acknowledgement lost"], "resent; the meter applied each purchase once (litres below)"),
        FaultLine("battery dies (meter silent for good)", injected["battery dies (meter silent for good)"], f"{open_alerts.get('METER_OFFLINE', 0)} meters offline with an alert at the end (dead or long asleep)"),
        FaultLine("card lost after writing", injected["card lost after writing"], f"{replaced_cards} cards replaced; what they held is written again"),
        FaultLine("worker crash", injected["worker crash"], "frames it held are settled by the meters' next reports"),
        FaultLine("broker outage", injected["broker outage"], "sends refused, tried again after the outage"),
        FaultLine(
            "order paid twice",
            injected["order paid twice"],
            f"second payment held; {outcome.refunds_requested} refunded by an operator, {outcome.refunds_confirmed} confirmed paid back by the channel (the worker asked)",
        ),  # fmt: skip
    ]
    money = MoneyCheck(
        collected_fen=sum(c.amount_fen for c in outcome.collected),
        reached_fen=sum(c.amount_fen for c in reached),
        never_reached_fen=sum(c.amount_fen for c in outcome.collected if not c.reached_gasworks),
        clearing_fen=totals.get(LedgerAccountKind.CLEARING.value, 0),
        on_balances_fen=-totals.get(LedgerAccountKind.PREPAID.value, 0),
        in_delivery_fen=-totals.get(LedgerAccountKind.DELIVERY.value, 0),
        gas_applied_fen=-totals.get(LedgerAccountKind.REVENUE.value, 0),
        suspense_fen=-totals.get(LedgerAccountKind.SUSPENSE.value, 0),
        refunds_in_flight_fen=-totals.get(LedgerAccountKind.REFUNDS.value, 0),
        refunded_fen=sum(c.amount_fen for c in outcome.collected if c.refunded_at is not None),
        litres_applied_at_meters=sum(at_meters.values()),
        litres_proven_applied=sum(orders[key]["volume_litres"] or 0 for key in proven),
        meter_purchases_unknown_to_gasworks=unknown,
        proven_but_not_at_meter=len(proven - at_meters.keys()),
        ledger_findings=[f"{x.code} {x.subject}: {x.detail}" for x in ledger.findings],
    )
    samples = {}
    for f in reversed(facts):
        key = f"{f['route']} {'applied' if f['applied_at'] else 'waiting'}"
        if f["route"] and key not in samples:
            samples[key] = f["payment_id"]
    to_gas, button_goal, button_carrier = payment_to_gas(sim, outcome, facts)
    return Report(
        days=outcome.days,
        households=outcome.households,
        iot_meters=sum(1 for h in sim.city.households if h.kind == "iot"),
        card_meters=sum(1 for h in sim.city.households if h.kind == "card"),
        channels=channels,
        latency=latency,
        reached_gas=sum(1 for f in facts if f["applied_at"] is not None),
        booked_purchases=sum(1 for f in facts if f["command_id"] is not None),
        stuck=stuck,
        faults=faults,
        money=money,
        truth_checks=outcome.truth_checks,
        truth_violations=outcome.truth_violations,
        sample_payment_ids=samples,
        without_gas=time_without_gas(outcome),
        to_gas=to_gas,
        button_goal=button_goal,
        button_carrier=button_carrier,
    )


def _reason(timeline) -> str:  # noqa: ANN001
    """What the resident is told, short enough to group by; for stuck orders, why the meter said no."""
    if timeline.status == "STUCK" and timeline.order is not None:
        return f"{timeline.headline.en} ({timeline.order.state})"
    return timeline.headline.en
