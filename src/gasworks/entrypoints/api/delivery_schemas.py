"""Request and response bodies for meter delivery, cards, tariffs, kiosks and alerts."""

from datetime import date, datetime

from pydantic import BaseModel, Field, StrictInt

from gasworks.domain.accounts import CustomerClass
from gasworks.domain.delivery import Alert, MeterCommand, MeterLink, MeterModel, valve_reason_names
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.meter_models import CreditUnit, DiByteOrder, MacScheme
from gasworks.domain.tariffs import Tariff, milli_fen_to_price_text
from gasworks.entrypoints.api.schemas import PaymentOut, Strict
from gasworks.services.timeline import Text, Timeline


class TextOut(BaseModel):
    zh: str
    en: str

    @classmethod
    def of(cls, text: Text | None) -> "TextOut | None":
        return None if text is None else cls(zh=text.zh, en=text.en)


class CommandEventOut(BaseModel):
    state: str
    at: datetime
    note: str


class TierPieceOut(BaseModel):
    tier_no: int
    litres: int
    cost_fen: int
    price_yuan_per_m3: str


class CommandOut(BaseModel):
    id: int
    meter_serial: str
    account_no: str
    kind: str
    route: str
    state: str
    note: str
    created_at: datetime
    expires_at: datetime | None
    payment_id: str | None
    purchase_seq: int | None
    volume_litres: int | None
    cost_fen: int | None
    tiers: list[TierPieceOut]
    sends: int
    events: list[CommandEventOut]

    @classmethod
    def of(cls, c: MeterCommand) -> "CommandOut":
        return cls(
            id=c.id or 0, meter_serial=c.meter_serial, account_no=c.account_no, kind=c.kind.value, route=c.route.value, state=c.state.value,
            note=c.note, created_at=c.created_at, expires_at=c.expires_at, payment_id=c.payment_id, purchase_seq=c.purchase_seq,
            volume_litres=c.volume_litres, cost_fen=c.cost_fen, sends=c.sends,
            tiers=[TierPieceOut(tier_no=n, litres=litres, cost_fen=fen, price_yuan_per_m3=milli_fen_to_price_text(price)) for n, litres, fen, price in c.tier_pieces],
            events=[CommandEventOut(state=e.state.value, at=e.at, note=e.note) for e in c.events],
        )  # fmt: skip


class KioskOut(BaseModel):
    id: str
    name: str
    channel_id: str
    community: str
    address: str
    latitude: float
    longitude: float
    status: str
    opening_hours: str = ""

    @classmethod
    def of(cls, k: Kiosk) -> "KioskOut":
        return cls(**k.__dict__)


class NearbyKioskOut(KioskOut):
    distance_m: int | None
    map_url: str = Field("", description="an OpenStreetMap link centred on the kiosk")


class DeliveryStepOut(BaseModel):
    key: str
    title: TextOut
    at: datetime | None
    done: bool


class DeliveryOut(BaseModel):
    status: str = Field(description="HELD, REFUND_REQUESTED, REFUNDED, REVERSED, ARREARS, ON_BALANCE, WAITING_FOR_METER, SENT_TO_METER, WAITING_FOR_CARD, CARD_WRITTEN, VALVE_CLOSED, GAS_AVAILABLE, CLOSED_FOR_SAFETY or STUCK")
    headline: TextOut
    next_step: TextOut | None
    steps: list[DeliveryStepOut]
    order: CommandOut | None
    nearest_kiosks: list[NearbyKioskOut]
    resident_url: str

    @classmethod
    def of(cls, t: Timeline, resident_url: str) -> "DeliveryOut":
        return cls(
            status=t.status, headline=TextOut.of(t.headline), next_step=TextOut.of(t.next_step),
            steps=[DeliveryStepOut(key=s.key, title=TextOut.of(s.title), at=s.at, done=s.done) for s in t.steps],
            order=CommandOut.of(t.order) if t.order else None,
            nearest_kiosks=[NearbyKioskOut(**KioskOut.of(n.kiosk).model_dump(), distance_m=n.distance_m, map_url=n.map_url) for n in t.kiosks],
            resident_url=resident_url,
        )  # fmt: skip


class PaymentDeliveryOut(PaymentOut):
    delivery: DeliveryOut


class MeterOut(BaseModel):
    serial: str
    account_no: str
    kind: str
    link_state: str
    last_report_at: datetime | None
    purchase_seq_issued: int
    applied_seq: int
    credit_litres: int | None
    credit_fen: int | None = Field(None, description="a money meter's balance as it reported it, in fen")
    cumulative_litres: int | None
    valve_open: bool | None
    battery_mv: int | None
    alarms: int
    reopen_needs_button: bool
    card_no: str | None
    card_purchase_seq: int
    model: str | None = None
    last_report_clock: datetime | None = Field(None, description="the meter's own clock in the newest report taken (as the meter keeps it)")
    valve_reasons: list[str] = Field(default_factory=list, description="why gasworks keeps the valve closed: credit, arrears, leak_or_tamper, hazard_stop, operator")
    open_commands: list[CommandOut]

    @classmethod
    def of(cls, m: MeterLink, commands: list[MeterCommand]) -> "MeterOut":
        return cls(
            **{k: getattr(m, k) for k in ("serial", "account_no", "last_report_at", "purchase_seq_issued", "applied_seq", "credit_litres", "cumulative_litres",
                                          "valve_open", "battery_mv", "alarms", "reopen_needs_button", "card_no", "card_purchase_seq", "model", "last_report_clock", "credit_fen")},
            kind=m.kind.value, link_state=m.link_state.value, open_commands=[CommandOut.of(c) for c in commands],
            valve_reasons=valve_reason_names(m.valve_reasons),
        )  # fmt: skip


class MeterSettingsIn(Strict):
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,40}$")
    reopen_needs_button: bool | None = None


class MeterModelIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,40}$")
    purchase_seq_bytes: int = Field(4, description="1: the purchase serial wraps at 255 (money meters' 0xA013); 4: BCD, no wrap")
    reopen_needs_button: bool = False
    mac_scheme: MacScheme = Field(MacScheme.SM4_CMAC, description="sm4-cmac, aes128-cmac, or none (carrier platform only)")
    di_byte_order: DiByteOrder = Field(DiByteOrder.LOW_FIRST, description="low-first: 0x901F sent 1F 90 (CJ/T 188); high-first: 90 1F")
    credit_unit: CreditUnit = Field(CreditUnit.LITRES, description="litres (volume meter) or fen (money meter: BCD yuan with 2 decimals)")
    report_interval_s: int = Field(86_400, ge=60, le=7 * 86_400, description="how often the meter wakes and reports by itself")
    description: str = Field("", max_length=200)


class MeterModelSettingsIn(Strict):
    reopen_needs_button: bool


class MeterModelOut(BaseModel):
    name: str
    purchase_seq_bytes: int
    reopen_needs_button: bool
    mac_scheme: str
    di_byte_order: str
    credit_unit: str
    report_interval_s: int
    description: str
    meters_changed: int | None = None

    @classmethod
    def of(cls, m: MeterModel, meters_changed: int | None = None) -> "MeterModelOut":
        return cls(
            name=m.name, purchase_seq_bytes=m.purchase_seq_bytes, reopen_needs_button=m.reopen_needs_button, mac_scheme=m.mac_scheme.value,
            di_byte_order=m.di_byte_order.value, credit_unit=m.credit_unit.value, report_interval_s=m.report_interval_s, description=m.description,
            meters_changed=meters_changed,
        )  # fmt: skip


class ValveCloseIn(Strict):
    reason: str = Field(pattern=r"^(arrears|hazard_stop|operator)$")
    note: str = Field(min_length=1, max_length=200)


class ValveResolutionIn(Strict):
    reason: str = Field(pattern=r"^(arrears|leak_or_tamper|hazard_stop|operator)$", description="the reason cleared; a leak or a hazard stop by a technician's resolution")
    note: str = Field(min_length=1, max_length=200, description="what the technician or operator found and did")


class AlertResolutionIn(Strict):
    note: str = Field(min_length=1, max_length=200)


class CardReadIn(Strict):
    card_no: str = Field(pattern=r"^[0-9A-Za-z]{4,20}$")
    meter_serial: str = Field(pattern=r"^[0-9]{14}$")
    card_purchase_seq: StrictInt = Field(ge=0, description="the last purchase serial written to the card")
    meter_applied_seq: StrictInt = Field(ge=0, description="the last purchase serial the meter applied, as it wrote it back")
    remaining_litres: StrictInt | None = Field(None, description="the meter's remaining credit as written back to the card")


class CardPurchaseOut(BaseModel):
    order_id: int
    purchase_seq: int
    volume_litres: int


class CardReadOut(BaseModel):
    account_no: str
    meter_serial: str
    card_no: str
    to_write: list[CardPurchaseOut] = Field(description="write these to the card in this order; confirm each")
    applied_now: list[int] = Field(description="purchase serials this read showed as applied by the meter")


class CardWriteIn(Strict):
    card_no: str = Field(pattern=r"^[0-9A-Za-z]{4,20}$")
    meter_serial: str = Field(pattern=r"^[0-9]{14}$")
    purchase_seq: StrictInt = Field(ge=1)
    card_purchase_seq_after: StrictInt = Field(ge=0, description="the card's purchase counter read back after writing")


class CardWriteOut(BaseModel):
    order_id: int
    purchase_seq: int
    state: str
    changed: bool = Field(description="false for a replayed confirmation: nothing changed")


class CardReplaceIn(Strict):
    card_no: str = Field(pattern=r"^[0-9A-Za-z]{4,20}$")
    reason: str = Field(min_length=1, max_length=200)


class CardReplaceOut(BaseModel):
    meter_serial: str
    card_no: str
    start_purchase_seq: int = Field(description="initialise the new card's counters to this")
    to_rewrite: list[int]


class TierIn(Strict):
    upto_m3: StrictInt | None = Field(description="the tier ends at this annual volume in m³; null for the last tier")
    price_yuan_per_m3: str = Field(pattern=r"^[0-9]{1,4}(\.[0-9]{1,5})?$", examples=["2.99"])


class TariffIn(Strict):
    customer_class: CustomerClass
    effective_from: date
    tiers: list[TierIn] = Field(min_length=1, max_length=5)
    year_start_month: int = Field(1, ge=1, le=12)
    year_start_day: int = Field(1, ge=1, le=31)


class TierOut(BaseModel):
    upto_litres: int | None
    price_yuan_per_m3: str


class TariffOut(BaseModel):
    id: int | None
    customer_class: str
    effective_from: date
    tiers: list[TierOut]
    year_start_month: int
    year_start_day: int

    @classmethod
    def of(cls, t: Tariff) -> "TariffOut":
        return cls(
            id=t.id, customer_class=t.customer_class.value, effective_from=t.effective_from, year_start_month=t.year_start_month, year_start_day=t.year_start_day,
            tiers=[TierOut(upto_litres=tier.upto_litres, price_yuan_per_m3=milli_fen_to_price_text(tier.price_milli_fen_per_m3)) for tier in t.tiers],
        )  # fmt: skip


class KioskIn(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,39}$")
    name: str = Field(min_length=1, max_length=100)
    channel_id: str = Field(min_length=1, max_length=40)
    community: str = Field(max_length=100)
    address: str = Field("", max_length=300)
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    status: str = Field("working", pattern=r"^(working|out_of_order|closed)$")
    opening_hours: str = Field("", max_length=40, description='"07:00-22:00", "24h", or "" when not known')


class KioskStatusIn(Strict):
    status: str = Field(pattern=r"^(working|out_of_order|closed)$")


class AlertOut(BaseModel):
    id: int
    kind: str
    subject: str
    reason: str
    raised_at: datetime
    cleared_at: datetime | None
    cleared_by: str = Field(description="what clears an alert of this kind")
    resolved_by: str | None = None
    resolution: str | None = None

    @classmethod
    def of(cls, a: Alert) -> "AlertOut":
        return cls(**a.__dict__, cleared_by=a.cleared_by)


class OperatorActionIn(Strict):
    reason: str = Field(min_length=1, max_length=200)
