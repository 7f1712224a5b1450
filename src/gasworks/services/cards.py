"""IC-card meters: a purchase reaches the meter on the resident's card, written at a kiosk or counter.

The card carries two counters: the last purchase serial written to it, and the last serial the meter
applied (the meter writes that back when the card is inserted). Every read settles what the card
shows; every write is confirmed by the device, once; a replaced card (补卡) carries the counters over,
so nothing is written twice or lost. The meter itself refuses a serial it has already applied.
"""

import re
from dataclasses import dataclass

from gasworks.domain.accounts import MeterKind, check_meter_serial
from gasworks.domain.delivery import OPEN_STATES, CardState, CommandState, MeterCommand, MeterLink, settle_by_card
from gasworks.domain.errors import Conflict, InvalidInput, NotFound
from gasworks.services.delivery import book_applied
from gasworks.services.unit_of_work import UnitOfWork

_CARD_NO = re.compile(r"^[0-9A-Za-z]{4,20}$")
COUNTER_MAX = 99_999_999  # eight BCD digits on the card


def check_card_no(card_no: str) -> str:
    if not isinstance(card_no, str) or not _CARD_NO.match(card_no):
        raise InvalidInput(f"card number must be 4 to 20 letters or digits, got {card_no!r}", code="INVALID_CARD_NO")
    return card_no


def _check_counter(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= COUNTER_MAX:
        raise InvalidInput(f"{name} must be an integer from 0 to {COUNTER_MAX}, got {value!r}", code="INVALID_CARD_COUNTER")


def _card_meter(uow: UnitOfWork, serial: str, card_no: str) -> MeterLink:
    link = uow.meters.get(check_meter_serial(serial), lock=True)
    if link is None:
        raise NotFound(f"no meter {serial}", code="METER_NOT_FOUND")
    if link.kind != MeterKind.CARD:
        raise Conflict(f"meter {serial} is an IoT meter: its purchases go over the air", code="NOT_A_CARD_METER")
    if link.card_no is not None and link.card_no != card_no:
        raise Conflict(f"card {card_no} is not the current card of meter {serial} (replaced?)", code="CARD_NOT_CURRENT")
    return link


@dataclass(frozen=True)
class CardRead:
    card_no: str
    meter_serial: str
    card_purchase_seq: int
    meter_applied_seq: int
    remaining_litres: int | None = None


@dataclass(frozen=True)
class CardAnswer:
    account_no: str
    meter_serial: str
    card_no: str
    to_write: list[MeterCommand]  # in this order, each confirmed after it is written
    applied_now: list[MeterCommand]  # settled by this read


def read_card(read: CardRead, uow: UnitOfWork, *, actor: str) -> CardAnswer:
    check_card_no(read.card_no)
    _check_counter("card_purchase_seq", read.card_purchase_seq)
    _check_counter("meter_applied_seq", read.meter_applied_seq)
    if read.meter_applied_seq > read.card_purchase_seq:
        raise InvalidInput("the meter cannot have applied more purchases than were written to the card", code="INVALID_CARD_COUNTER")
    with uow:
        now = uow.clock.now()
        link = _card_meter(uow, read.meter_serial, read.card_no)
        if read.card_purchase_seq > link.purchase_seq_issued:
            uow.alerts.raise_once(
                kind="CARD_COUNTER_AHEAD", subject=f"meter:{link.serial}",
                reason=f"card {read.card_no} shows purchase #{read.card_purchase_seq}; only #{link.purchase_seq_issued} was ever issued", at=now,
            )  # fmt: skip
            uow.commit()
            raise Conflict(f"card shows purchase #{read.card_purchase_seq}, only #{link.purchase_seq_issued} issued: nothing written", code="CARD_COUNTER_AHEAD")
        if link.card_no is None:
            link.card_no = read.card_no
            uow.audit.append(at=now, actor=actor, action="card.bind", subject=f"meter:{link.serial}", detail={"card_no": read.card_no})
        orders = uow.meter_commands.for_meter(link.serial, states=OPEN_STATES, route=MeterKind.CARD)
        to_write = settle_by_card(orders, CardState(read.card_purchase_seq, read.meter_applied_seq), now)
        applied_now = [o for o in orders if o.state == CommandState.APPLIED]
        for order in applied_now:
            book_applied(uow, order, now)
        for order in orders:
            if order.events:
                uow.meter_commands.save(order, now)
        link.applied_seq = max(link.applied_seq, read.meter_applied_seq)
        link.card_purchase_seq = read.card_purchase_seq
        if read.remaining_litres is not None:
            link.credit_litres = read.remaining_litres
        link.last_report_at = now
        uow.meters.save(link)
        uow.commit()
        return CardAnswer(link.account_no, link.serial, read.card_no, to_write, applied_now)


@dataclass(frozen=True)
class CardWrite:
    card_no: str
    meter_serial: str
    purchase_seq: int
    card_purchase_seq_after: int  # the card's counter as the device read it back after writing


def confirm_card_write(write: CardWrite, uow: UnitOfWork, *, actor: str) -> tuple[MeterCommand, bool]:
    """The device wrote a purchase to the card. Returns the order and whether this call changed it."""
    check_card_no(write.card_no)
    _check_counter("purchase_seq", write.purchase_seq)
    _check_counter("card_purchase_seq_after", write.card_purchase_seq_after)
    with uow:
        now = uow.clock.now()
        link = _card_meter(uow, write.meter_serial, write.card_no)
        order = uow.meter_commands.credit_order(link.serial, write.purchase_seq)
        if order is None:
            raise NotFound(f"meter {link.serial} has no purchase #{write.purchase_seq}", code="ORDER_NOT_FOUND")
        if order.state in (CommandState.WRITTEN_TO_CARD, CommandState.APPLIED):
            return order, False  # a replayed confirmation: the first one stands
        if write.card_purchase_seq_after != write.purchase_seq:
            raise Conflict(
                f"card counter reads {write.card_purchase_seq_after} after writing purchase #{write.purchase_seq}: the write did not take",
                code="CARD_WRITE_NOT_TAKEN",
            )
        if order.state != CommandState.PENDING:
            raise Conflict(f"purchase #{write.purchase_seq} is {order.state}: an operator must reissue it first", code="ORDER_NOT_WRITABLE")
        if write.purchase_seq != link.card_purchase_seq + 1:
            raise Conflict(f"the card holds purchase #{link.card_purchase_seq}; #{link.card_purchase_seq + 1} must be written first", code="CARD_WRITE_OUT_OF_ORDER")
        order.move_to(CommandState.WRITTEN_TO_CARD, now, f"written to card {write.card_no} by {actor}; insert the card in the meter")
        link.card_purchase_seq = write.purchase_seq
        uow.meter_commands.save(order, now)
        uow.meters.save(link)
        uow.commit()
        return order, True


@dataclass(frozen=True)
class CardReplaced:
    meter_serial: str
    card_no: str
    start_purchase_seq: int  # initialise the new card's counters to this
    to_rewrite: list[int]  # purchase serials that were on the old card and must go on the new one


def replace_card(meter_serial: str, new_card_no: str, uow: UnitOfWork, *, actor: str, reason: str) -> CardReplaced:
    """Issue a new card (补卡). What the old card carried and the meter never applied is written again."""
    check_card_no(new_card_no)
    if not reason.strip():
        raise InvalidInput("say why the card is replaced (lost, damaged ...)", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        link = uow.meters.get(check_meter_serial(meter_serial), lock=True)
        if link is None:
            raise NotFound(f"no meter {meter_serial}", code="METER_NOT_FOUND")
        if link.kind != MeterKind.CARD:
            raise Conflict(f"meter {meter_serial} is an IoT meter", code="NOT_A_CARD_METER")
        other = uow.meters.get_by_card(new_card_no)
        if other is not None and other.serial != link.serial:
            raise Conflict(f"card {new_card_no} belongs to meter {other.serial}", code="CARD_TAKEN")
        orders = uow.meter_commands.for_meter(link.serial, states=frozenset({CommandState.WRITTEN_TO_CARD}), route=MeterKind.CARD)
        for order in orders:
            order.move_to(CommandState.PENDING, now, f"card replaced ({reason.strip()[:80]}): to be written to the new card {new_card_no}")
            uow.meter_commands.save(order, now)
        old_card = link.card_no
        link.card_no = new_card_no
        link.card_purchase_seq = link.applied_seq
        uow.meters.save(link)
        uow.audit.append(
            at=now, actor=actor, action="card.replace", subject=f"meter:{link.serial}",
            detail={"old_card_no": old_card, "new_card_no": new_card_no, "carried_applied_seq": link.applied_seq, "rewrite": [o.purchase_seq for o in orders], "reason": reason.strip()[:200]},
        )  # fmt: skip
        uow.commit()
        return CardReplaced(link.serial, new_card_no, link.applied_seq, [o.purchase_seq or 0 for o in orders])
