"""Repositories for meter delivery: meters' delivery side, their models, and meter commands."""

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, and_, bindparam, func, insert, or_, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken
from gasworks.domain.accounts import CustomerClass, MeterKind
from gasworks.domain.delivery import (
    OPEN_STATES,
    CommandEvent,
    CommandKind,
    CommandState,
    LinkState,
    MeterCommand,
    MeterLink,
    MeterModel,
    PurchaseSite,
)
from gasworks.domain.ledger import prepaid_account
from gasworks.domain.meter_models import CreditUnit, DiByteOrder, MacScheme

METER_WORK_CHANNEL = "gasworks_meter_work"  # PostgreSQL LISTEN/NOTIFY channel: "a meter has a new command"

_LINK_COLUMNS = (
    "purchase_seq_issued", "tier_year", "litres_bought_tier_year", "applied_seq", "last_report_at", "awake_until",
    "credit_litres", "cumulative_litres", "valve_open", "battery_mv", "alarms", "reopen_needs_button", "card_no",
    "card_purchase_seq", "model", "last_report_clock", "last_report_counter", "valve_reasons", "credit_fen",
)  # fmt: skip


class Meters:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def _select(self, *, lock: bool, skip_locked: bool = False):  # noqa: ANN202
        return _meter_select(lock and self.c.dialect.name == "postgresql", skip_locked)

    def get(self, serial: str, *, lock: bool = False) -> MeterLink | None:
        row = self.c.execute(_meter_by_serial(lock and self.c.dialect.name == "postgresql"), {"meter_serial": serial}).first()
        return _link(row) if row else None

    def get_for_account(self, account_no: str, *, lock: bool = False) -> MeterLink | None:
        row = self.c.execute(self._select(lock=lock).where(t.meters.c.account_no == account_no)).first()
        return _link(row) if row else None

    def get_for_purchase(self, account_no: str) -> PurchaseSite | None:
        """The account's meter, locked (the meter first, then the balance, everywhere), with its
        customer's class, cached balance and waiting commands in the same round trip."""
        row = self.c.execute(_for_purchase_query(self.c.dialect.name), {"account_no": account_no, "prepaid_code": prepaid_account(account_no)}).first()
        if row is None:
            return None
        return PurchaseSite(_link(row), CustomerClass(row.customer_class), int(row.entries_sum_fen), int(row.open_commands))

    def get_by_card(self, card_no: str, *, lock: bool = False) -> MeterLink | None:
        row = self.c.execute(self._select(lock=lock).where(t.meters.c.card_no == card_no)).first()
        return _link(row) if row else None

    def last_reports(self, serials: list[str]) -> dict[str, datetime | None]:
        rows = self.c.execute(select(t.meters.c.serial, t.meters.c.last_report_at).where(t.meters.c.serial.in_(sorted(set(serials)))))
        return {serial: at for serial, at in rows}

    def lock_if_free(self, serial: str) -> MeterLink | None:
        """The meter, locked for this transaction; None if another worker holds it (PostgreSQL)."""
        row = self.c.execute(self._select(lock=True, skip_locked=True).where(t.meters.c.serial == serial)).first()
        return _link(row) if row else None

    def claim_awake_with_work(self, now: datetime, limit: int) -> list[MeterLink]:
        """Up to `limit` awake IoT meters with a command to send or resend, locked for this
        transaction; on PostgreSQL a meter another worker holds is skipped (FOR UPDATE SKIP LOCKED),
        so concurrent dispatchers take disjoint batches instead of queueing behind each other."""
        query = self._select(lock=True, skip_locked=True).where(t.meters.c.awake_until > now, _has_work_due(now)).order_by(t.meters.c.awake_until).limit(limit)
        return [_link(row) for row in self.c.execute(query)]

    def save(self, link: MeterLink) -> None:
        values = {name: getattr(link, name) for name in _LINK_COLUMNS}
        values["link_state"] = link.link_state.value
        self.c.execute(_SAVE_METER, values | {"meter_serial": link.serial})

    def silent_since(self, cutoff: datetime, limit: int, *, cutoff_by_model: Mapping[str, datetime] | None = None) -> list[str]:
        m, by_model = t.meters, dict(cutoff_by_model or {})
        silent = or_(
            and_(or_(m.c.model.is_(None), m.c.model.not_in(list(by_model))), m.c.last_report_at < cutoff) if by_model else m.c.last_report_at < cutoff,
            *(and_(m.c.model == name, m.c.last_report_at < model_cutoff) for name, model_cutoff in by_model.items()),
        )
        rows = self.c.execute(select(m.c.serial).where(m.c.kind == MeterKind.IOT.value, m.c.link_state == LinkState.ONLINE.value, silent).limit(limit))
        return [r.serial for r in rows]

    def set_model(self, serial: str, model: MeterModel) -> None:
        """A meter takes a model, and the model's button setting with it."""
        self.c.execute(update(t.meters).where(t.meters.c.serial == serial).values(model=model.name, reopen_needs_button=model.reopen_needs_button))

    def set_reopen_needs_button(self, *, serial: str | None = None, model: str | None = None, value: bool) -> int:
        """For one meter, or for every meter of a model; returns how many meters changed."""
        query = update(t.meters).values(reopen_needs_button=value)
        query = query.where(t.meters.c.serial == serial) if serial is not None else query.where(t.meters.c.model == model)
        return self.c.execute(query).rowcount

    def claimed_beyond_issued(self, limit: int) -> list[tuple[str, int, int]]:
        """(serial, applied, issued) for meters whose applied serial is above what was ever issued."""
        m = t.meters
        rows = self.c.execute(select(m.c.serial, m.c.applied_seq, m.c.purchase_seq_issued).where(m.c.applied_seq > m.c.purchase_seq_issued).limit(limit))
        return [(r.serial, r.applied_seq, r.purchase_seq_issued) for r in rows]

    def count_by_link_state(self) -> dict[str, int]:
        rows = self.c.execute(select(t.meters.c.link_state, func.count()).where(t.meters.c.kind == MeterKind.IOT.value).group_by(t.meters.c.link_state))
        return {state: int(n) for state, n in rows}


@functools.cache
def _meter_select(lock: bool, skip_locked: bool) -> Any:
    """A meter with its model's serial width; built once per way of locking (callers add their WHERE)."""
    bytes_ = select(t.meter_models.c.purchase_seq_bytes).where(t.meter_models.c.name == t.meters.c.model).scalar_subquery()
    query = select(t.meters, bytes_.label("purchase_seq_bytes"))
    return query.with_for_update(skip_locked=skip_locked, of=t.meters) if lock else query


@functools.cache
def _meter_by_serial(lock: bool) -> Any:
    return _meter_select(lock, False).where(t.meters.c.serial == bindparam("meter_serial"))


@functools.cache
def _for_purchase_query(dialect: str) -> Any:
    """Meters.get_for_purchase's query, built once per dialect (its values bound at execution)."""
    mc, la = t.meter_commands, t.ledger_accounts
    waiting = select(func.count()).where(mc.c.meter_serial == t.meters.c.serial, mc.c.state.in_([s.value for s in OPEN_STATES])).scalar_subquery()
    query = (
        _meter_select(False, False)
        .add_columns(t.customers.c.customer_class, la.c.entries_sum_fen, waiting.label("open_commands"))
        .join(t.customers, t.customers.c.account_no == t.meters.c.account_no)
        .join(la, la.c.code == bindparam("prepaid_code"))
        .where(t.meters.c.account_no == bindparam("account_no"))
    )
    return query.with_for_update(of=t.meters) if dialect == "postgresql" else query


@functools.cache
def _commands_of_meter(by_route: bool) -> Any:
    mc = t.meter_commands
    query = select(mc).where(mc.c.meter_serial == bindparam("meter_serial"), mc.c.state.in_(bindparam("states", expanding=True))).order_by(mc.c.id)
    return query.where(mc.c.route == bindparam("route")) if by_route else query


# The booking and delivery paths' other statements here, built once (each execution binds its values).
_SAVE_COMMAND = update(t.meter_commands).where(t.meter_commands.c.id == bindparam("command_id"))
_SAVE_METER = update(t.meters).where(t.meters.c.serial == bindparam("meter_serial"))
_INSERT_COMMAND = insert(t.meter_commands).returning(t.meter_commands.c.id)
_INSERT_COMMAND_EVENTS = insert(t.meter_command_events)
_ANNOUNCE_WORK = select(func.pg_notify(METER_WORK_CHANNEL, bindparam("meter_serial", type_=String)))


def _has_work_due(now: datetime):  # noqa: ANN202 - a SQL condition on the meters row
    """The meter has an IoT command not sent yet, or one in flight whose acknowledgement wait is over
    (or whose window a new report reopened)."""
    mc = t.meter_commands
    return (
        select(mc.c.id)
        .where(
            mc.c.meter_serial == t.meters.c.serial,
            mc.c.route == MeterKind.IOT.value,
            or_(
                mc.c.state == CommandState.PENDING.value,
                # In flight: due after its ack wait, or at once when a new report opened a window
                # (next_send_at cleared): a report pushed by a carrier platform reaches no worker's queue.
                and_(mc.c.state.in_([CommandState.SENT.value, CommandState.DELIVERED.value]), or_(mc.c.next_send_at <= now, mc.c.next_send_at.is_(None))),
            ),
        )
        .exists()
    )


def _link(row: Any) -> MeterLink:
    return MeterLink(
        serial=row.serial,
        account_no=row.account_no,
        kind=MeterKind(row.kind),
        link_state=LinkState(row.link_state),
        seq_modulus=MeterModel("", row.purchase_seq_bytes).seq_modulus if row.purchase_seq_bytes else None,
        **{name: getattr(row, name) for name in _LINK_COLUMNS},
    )


_MODEL_COLUMNS = ("purchase_seq_bytes", "reopen_needs_button", "mac_scheme", "di_byte_order", "credit_unit", "report_interval_s", "description")


def model_of(row: Any) -> MeterModel:
    """A meter_models row (or a row carrying its columns) as the domain's profile."""
    return MeterModel(
        name=row.name,
        purchase_seq_bytes=row.purchase_seq_bytes,
        reopen_needs_button=row.reopen_needs_button,
        mac_scheme=MacScheme(row.mac_scheme),
        di_byte_order=DiByteOrder(row.di_byte_order),
        credit_unit=CreditUnit(row.credit_unit),
        report_interval_s=row.report_interval_s,
        description=row.description,
    )


class MeterModels:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, model: MeterModel, at: datetime) -> bool:
        values = {name: getattr(model, name) for name in _MODEL_COLUMNS}
        inserted = self.c.execute(insert_unless_taken(self.c, t.meter_models).values(name=model.name, created_at=at, **values).returning(t.meter_models.c.name)).first()
        return inserted is not None

    def get(self, name: str) -> MeterModel | None:
        row = self.c.execute(select(t.meter_models).where(t.meter_models.c.name == name)).first()
        return model_of(row) if row else None

    def set_reopen_needs_button(self, name: str, value: bool) -> None:
        self.c.execute(update(t.meter_models).where(t.meter_models.c.name == name).values(reopen_needs_button=value))

    def list(self) -> list[MeterModel]:
        rows = self.c.execute(select(t.meter_models).order_by(t.meter_models.c.name))
        return [model_of(r) for r in rows]

    def count_meters(self) -> dict[str, int]:
        rows = self.c.execute(select(t.meters.c.model, func.count()).where(t.meters.c.model.is_not(None)).group_by(t.meters.c.model))
        return {model: int(n) for model, n in rows}


class MeterCommands:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, command: MeterCommand) -> int:
        command.id = self.c.execute(_INSERT_COMMAND, self._values(command) | {"created_at": command.created_at}).scalar_one()
        self._save_events(command)
        return command.id

    def save(self, command: MeterCommand, at: datetime) -> None:
        self.c.execute(_SAVE_COMMAND, self._values(command) | {"updated_at": at, "command_id": command.id})
        self._save_events(command)

    def save_many(self, commands: list[MeterCommand], at: datetime) -> None:
        """`save` for a batch, in two statements (one UPDATE and one INSERT of events, each executed many)."""
        if not commands:
            return
        self.c.execute(_SAVE_COMMAND, [self._values(command) | {"updated_at": at, "command_id": command.id} for command in commands])
        events = []
        for command in commands:
            events += [{"command_id": command.id, "seq": command.events_saved + i, "state": e.state.value, "at": e.at, "note": e.note[:300]} for i, e in enumerate(command.events, start=1)]
            command.events_saved += len(command.events)
            command.events = []
        if events:
            self.c.execute(insert(t.meter_command_events), events)

    def _values(self, command: MeterCommand) -> dict:
        return {
            "meter_serial": command.meter_serial,
            "account_no": command.account_no,
            "kind": command.kind.value,
            "route": command.route.value,
            "state": command.state.value,
            "updated_at": command.events[-1].at if command.events else command.created_at,  # save() passes its own
            "expires_at": command.expires_at,
            "payment_id": command.payment_id,
            "purchase_seq": command.purchase_seq,
            "volume_litres": command.volume_litres,
            "cost_fen": command.cost_fen,
            "tier_pieces": [list(p) for p in command.tier_pieces],
            "sends": command.sends,
            "window_sends": command.window_sends,
            "next_send_at": command.next_send_at,
            "note": command.note[:300],
            "events_count": command.events_saved + len(command.events),
        }

    def _save_events(self, command: MeterCommand) -> None:
        if command.events:
            self.c.execute(
                _INSERT_COMMAND_EVENTS,
                [{"command_id": command.id, "seq": command.events_saved + i, "state": e.state.value, "at": e.at, "note": e.note[:300]} for i, e in enumerate(command.events, start=1)],
            )
            command.events_saved += len(command.events)
            command.events = []

    def for_meter(self, serial: str, *, states: frozenset[CommandState] = OPEN_STATES, route: MeterKind | None = None) -> list[MeterCommand]:
        """Commands to change, in the order they must reach the meter: purchases by serial, then the rest."""
        params = {"meter_serial": serial, "states": sorted(s.value for s in states)}
        query = _commands_of_meter(route is not None)
        return [_command(r) for r in self.c.execute(query, params | ({"route": route.value} if route is not None else {}))]

    def for_meters(self, serials: list[str], *, route: MeterKind) -> dict[str, list[MeterCommand]]:
        """`for_meter` (open states) for many meters in one query: serial -> its commands in order."""
        mc = t.meter_commands
        query = select(mc).where(mc.c.meter_serial.in_(serials), mc.c.state.in_([s.value for s in OPEN_STATES]), mc.c.route == route.value).order_by(mc.c.id)
        found: dict[str, list[MeterCommand]] = {}
        for row in self.c.execute(query):
            found.setdefault(row.meter_serial, []).append(_command(row))
        return found

    def credit_order(self, serial: str, purchase_seq: int) -> MeterCommand | None:
        mc = t.meter_commands
        row = self.c.execute(select(mc).where(mc.c.meter_serial == serial, mc.c.purchase_seq == purchase_seq)).first()
        return _command(row) if row else None

    def get(self, command_id: int, *, with_events: bool = True) -> MeterCommand | None:
        row = self.c.execute(select(t.meter_commands).where(t.meter_commands.c.id == command_id)).first()
        if row is None:
            return None
        return self._with_events(row) if with_events else _command(row)

    def for_payment(self, payment_id: str) -> list[MeterCommand]:
        rows = self.c.execute(select(t.meter_commands).where(t.meter_commands.c.payment_id == payment_id).order_by(t.meter_commands.c.id))
        return [self._with_events(r) for r in rows]

    def every_credit_order(self, limit: int) -> list[tuple[str, int, int, str]]:
        mc = t.meter_commands
        rows = self.c.execute(select(mc.c.meter_serial, mc.c.purchase_seq, mc.c.volume_litres, mc.c.state).where(mc.c.kind == CommandKind.CREDIT.value).order_by(mc.c.id).limit(limit))
        return [(r.meter_serial, int(r.purchase_seq), int(r.volume_litres), r.state) for r in rows]

    def purchase_waits_s(self, received_since: datetime, received_until: datetime, limit: int) -> list[int | None]:
        mc, p, events = t.meter_commands, t.payments, t.meter_command_events
        first_applied = select(func.min(events.c.at)).where(events.c.command_id == mc.c.id, events.c.state == CommandState.APPLIED.value).scalar_subquery()
        rows = self.c.execute(
            select(p.c.received_at, first_applied.label("applied_at"))
            .select_from(mc.join(p, p.c.id == mc.c.payment_id))
            .where(mc.c.kind == CommandKind.CREDIT.value, p.c.received_at >= received_since, p.c.received_at < received_until)
            .limit(limit)
        )
        return [None if applied_at is None else max(0, int((applied_at - received_at).total_seconds())) for received_at, applied_at in rows]

    def recent(self, *, limit: int, states: list[CommandState] | None = None, serial: str | None = None) -> list[MeterCommand]:
        mc = t.meter_commands
        query = select(mc).order_by(mc.c.id.desc()).limit(limit)
        if states:
            query = query.where(mc.c.state.in_([s.value for s in states]))
        if serial:
            query = query.where(mc.c.meter_serial == serial)
        return [_command(r) for r in self.c.execute(query)]

    def applied_credits_since(self, since: datetime, limit: int) -> list[MeterCommand]:
        """Credit orders applied at or after `since` (applied is final, so its time is the last update)."""
        mc = t.meter_commands
        rows = self.c.execute(select(mc).where(mc.c.updated_at >= since, mc.c.kind == CommandKind.CREDIT.value, mc.c.state == CommandState.APPLIED.value).order_by(mc.c.id).limit(limit))
        return [_command(r) for r in rows]

    def applied_without_proof(self, limit: int) -> list[tuple[str, int, int, int]]:
        """Applied credit orders their meter's record does not cover: (serial, purchase serial,
        meter's applied serial, highest issued). Every applied purchase must be at or below both."""
        mc, m = t.meter_commands, t.meters
        rows = self.c.execute(
            select(mc.c.meter_serial, mc.c.purchase_seq, m.c.applied_seq, m.c.purchase_seq_issued)
            .join(m, m.c.serial == mc.c.meter_serial)
            .where(
                mc.c.kind == CommandKind.CREDIT.value, mc.c.state == CommandState.APPLIED.value,
                or_(mc.c.purchase_seq > m.c.applied_seq, mc.c.purchase_seq > m.c.purchase_seq_issued),
            )
            .order_by(mc.c.meter_serial, mc.c.purchase_seq)
            .limit(limit)
        )  # fmt: skip
        return [(r.meter_serial, r.purchase_seq, r.applied_seq, r.purchase_seq_issued) for r in rows]

    def meters_with_due_expiry(self, now: datetime, limit: int) -> list[str]:
        mc = t.meter_commands
        rows = self.c.execute(select(mc.c.meter_serial).where(mc.c.state.in_([CommandState.PENDING.value, CommandState.SENT.value]), mc.c.expires_at <= now).group_by(mc.c.meter_serial).limit(limit))
        return [r.meter_serial for r in rows]

    def open_iot_credits_older_than(self, cutoff: datetime, limit: int) -> list[MeterCommand]:
        mc = t.meter_commands
        rows = self.c.execute(select(mc).where(mc.c.state.in_([s.value for s in OPEN_STATES]), mc.c.route == MeterKind.IOT.value, mc.c.created_at < cutoff).order_by(mc.c.id).limit(limit))
        return [_command(r) for r in rows]

    def payment_deliveries(self) -> list[dict]:
        """Every payment with its purchase, if any, and when the purchase was written to a card and
        applied: the facts behind a delivery report (one row per payment)."""
        p, mc, ev = t.payments, t.meter_commands, t.meter_command_events
        first_at = lambda state: (  # noqa: E731
            select(func.min(ev.c.at)).where(ev.c.command_id == mc.c.id, ev.c.state == state).correlate(mc).scalar_subquery()
        )
        rows = self.c.execute(
            select(
                p.c.id.label("payment_id"), p.c.channel_id, p.c.channel_txn_id, p.c.amount_fen, p.c.account_no, p.c.state, p.c.hold_reason,
                func.coalesce(p.c.paid_at, p.c.received_at).label("paid_at"), p.c.received_at,
                mc.c.id.label("command_id"), mc.c.route, mc.c.state.label("command_state"), mc.c.purchase_seq, mc.c.volume_litres, mc.c.cost_fen, mc.c.meter_serial,
                first_at(CommandState.WRITTEN_TO_CARD.value).label("written_at"), first_at(CommandState.APPLIED.value).label("applied_at"),
            )
            .outerjoin(mc, and_(mc.c.payment_id == p.c.id, mc.c.kind == CommandKind.CREDIT.value))
            .order_by(p.c.received_at)
        )  # fmt: skip
        return [dict(r._mapping) for r in rows]

    def announce(self, serial: str) -> None:
        """Tell listening workers, at commit, that this meter has work (PostgreSQL NOTIFY; they poll on SQLite)."""
        if self.c.dialect.name == "postgresql":
            self.c.execute(_ANNOUNCE_WORK, {"meter_serial": serial})

    def count_open(self, serial: str) -> int:
        mc = t.meter_commands
        return int(self.c.execute(select(func.count()).where(mc.c.meter_serial == serial, mc.c.state.in_([s.value for s in OPEN_STATES]))).scalar_one())

    def undelivered_cost_fen(self) -> int:
        """What every credit order not yet applied (and not cancelled) cost: the delivery account's balance."""
        mc = t.meter_commands
        total = self.c.execute(select(func.coalesce(func.sum(mc.c.cost_fen), 0)).where(mc.c.kind == CommandKind.CREDIT.value, mc.c.state.not_in([CommandState.APPLIED.value, CommandState.CANCELLED.value]))).scalar_one()
        return int(total)

    def counts_by_state(self) -> dict[tuple[str, str], int]:
        mc = t.meter_commands
        rows = self.c.execute(select(mc.c.route, mc.c.state, func.count()).group_by(mc.c.route, mc.c.state))
        return {(route, state): int(n) for route, state, n in rows}

    def _with_events(self, row: Any) -> MeterCommand:
        command = _command(row)
        events = self.c.execute(select(t.meter_command_events).where(t.meter_command_events.c.command_id == row.id).order_by(t.meter_command_events.c.seq))
        command.events = [CommandEvent(CommandState(e.state), e.at, e.note) for e in events]
        command.events_saved = 0
        return command


def _command(row: Any) -> MeterCommand:
    return MeterCommand(
        id=row.id,
        meter_serial=row.meter_serial,
        account_no=row.account_no,
        kind=CommandKind(row.kind),
        route=MeterKind(row.route),
        state=CommandState(row.state),
        created_at=row.created_at,
        expires_at=row.expires_at,
        payment_id=row.payment_id,
        purchase_seq=row.purchase_seq,
        volume_litres=row.volume_litres,
        cost_fen=row.cost_fen,
        tier_pieces=tuple(tuple(p) for p in (row.tier_pieces or ())),
        sends=row.sends,
        window_sends=row.window_sends,
        next_send_at=row.next_send_at,
        note=row.note,
        events=[],
        events_saved=row.events_count,
    )
