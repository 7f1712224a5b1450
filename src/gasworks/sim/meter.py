"""A prepaid meter as firmware would behave, speaking the real frames of its model.

It applies purchase n only when its last applied serial is n - 1, acknowledges a replay without
applying it again, refuses a gap, and reports on waking. Used by tests and by the city simulator.

Its `model` (domain/meter_models.py) is what its firmware speaks: DI byte order, serial width, and
unit. A money meter keeps its balance in fen, is written amounts, prices the gas it burns itself
and closes its own valve below its overdraft; with `reopen_needs_button` it reopens only when the
resident presses its button (`press_button`), which also wakes it to report at once.

With a key installed (`install_key`, from gasworks' registration or rotation), it seals every frame
it sends and takes only downlinks sealed under the key it holds, with a MAC that verifies and a
counter above the last one it took: anything else is refused silently (no reply) and noted in
`refused`, so a spoofed "write purchase" credits nothing.
"""

import threading
from dataclasses import dataclass, field, replace
from datetime import datetime

import paho.mqtt.client as mqtt

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.frame_security import MeterKeyring
from gasworks.adapters.meters.transport import mqtt_client, topic_down, topic_up
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.meter_messages import (
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
from gasworks.domain.meter_models import MeterModel
from gasworks.domain.meter_security import FrameRefused, MeterFrameCounters
from gasworks.services.meter_keys import MeterKey


@dataclass
class SimulatedMeter:
    serial: str
    credit_litres: int = 0
    cumulative_litres: int = 0
    applied_seq: int = 0
    valve_open: bool = True
    battery_mv: int = 3_600
    alarms: Alarm = Alarm(0)
    total_purchased_litres: int = 0
    last_volume_litres: int = 0
    awake: bool = False
    acks_to_lose: int = 0  # fault injection: swallow this many replies
    busy_replies: int = 0  # fault injection: answer this many purchase writes with BUSY
    seq_modulus: int | None = None  # 256 for a model whose purchase serial is one byte (counts 254, 255, 0, 1 ...)
    frames_seen: list[bytes] = field(default_factory=list)
    applied: list[tuple[int, int]] = field(default_factory=list)  # (serial, litres) in order applied
    keyring: MeterKeyring | None = None  # None: a model without MAC (plain frames)
    refused: list[str] = field(default_factory=list)  # codes of downlinks refused (bad MAC, unknown key, replay, malformed)
    model: MeterModel | None = None  # None: gasworks' own layout (with a one-byte serial if seq_modulus says so)
    credit_fen: int = 0  # a money meter's balance
    price_fen_per_m3: int = 0  # a money meter prices what it burns (its tariff, written at installation)
    overdraft_fen: int = 100  # a money meter closes its valve below minus this (one operator's rule: at -¥1)
    closed_for_credit: bool = False  # its own valve closed for credit, waiting to reopen
    applied_fen: list[tuple[int, int]] = field(default_factory=list)  # a money meter's (serial, fen) in order applied
    _frame_seq: int = 0

    def __post_init__(self) -> None:
        if self.model is not None:
            self.seq_modulus = self.model.seq_modulus

    @property
    def wire_model(self) -> MeterModel:
        if self.model is not None:
            return self.model
        if self.seq_modulus == 256:
            return replace(cjt188.VOLUME_MODEL, purchase_seq_bytes=1)
        return cjt188.VOLUME_MODEL

    @property
    def is_money_meter(self) -> bool:
        return self.wire_model.is_money_meter

    @property
    def has_credit(self) -> bool:
        return self.credit_fen > 0 if self.is_money_meter else self.credit_litres > 0

    def install_key(self, key: MeterKey) -> None:
        """Write a key into the meter (at the factory, or on site during a rotation); counters carry on."""
        if self.keyring is None:
            self.keyring = MeterKeyring(key.scheme, key.key, MeterFrameCounters(key.key_version), model=self.wire_model)
        else:
            self.keyring.scheme = key.scheme
            self.keyring.install(key.key_version, key.key)

    def _encode(self, message: MeterMessage) -> bytes:
        if self.keyring is None:
            return cjt188.encode(message, self.wire_model)
        self.keyring.model = self.wire_model  # a test may change the model of a meter already keyed
        return self.keyring.seal(message)

    def report(self, clock: datetime) -> bytes:
        """Wake up and say how things are (the daily report); the meter listens after this."""
        self.awake = True
        self._frame_seq = (self._frame_seq + 1) % 256
        return self._encode(self._current_data(self._frame_seq, clock))

    def _current_data(self, frame_seq: int, clock: datetime) -> CurrentData:
        return CurrentData(
            serial=self.serial,
            frame_seq=frame_seq,
            cumulative_litres=self.cumulative_litres,
            credit_litres=None if self.is_money_meter else self.credit_litres,
            last_applied_seq=self.applied_seq,
            valve_open=self.valve_open,
            battery_mv=self.battery_mv,
            alarms=self.alarms,
            meter_clock=clock.replace(tzinfo=None, microsecond=0),
            credit_fen=self.credit_fen if self.is_money_meter else None,
        )

    def sleep(self) -> None:
        self.awake = False

    def use(self, litres: int) -> None:
        """Burn gas; the credit may run into the overdraft (a money meter closes itself past it)."""
        if self.valve_open:
            self.cumulative_litres += litres
            self.credit_litres -= litres
            if self.is_money_meter:
                self.credit_fen -= litres * self.price_fen_per_m3 // 1000
                if self.credit_fen < -self.overdraft_fen:
                    self.valve_open, self.closed_for_credit = False, True

    def button_pressed(self) -> None:
        """The resident presses the button: a valve the meter closed for credit reopens if the credit is back."""
        if self.closed_for_credit and self.has_credit:
            self.valve_open, self.closed_for_credit = True, False

    def press_button(self, clock: datetime) -> bytes:
        """The resident presses the communication button: the meter reopens what it may and reports now."""
        self.button_pressed()
        return self.report(clock)

    def days_of_gas_left(self, litres_per_day: int) -> int:
        """What the resident reads on the display, in whole days of ordinary use."""
        if self.is_money_meter:
            return self.credit_fen * 1000 // max(1, self.price_fen_per_m3 * litres_per_day)
        return self.credit_litres // max(1, litres_per_day)

    def on_downlink(self, payload: bytes) -> list[bytes]:
        """Handle one frame from gasworks; the replies to send back (none while asleep or lost)."""
        if not self.awake:
            return []
        self.frames_seen.append(payload)
        try:
            if self.keyring is not None:
                self.keyring.model = self.wire_model
            message = self.keyring.open(payload) if self.keyring is not None else cjt188.decode(payload, self.wire_model)
        except (MalformedFrame, FrameRefused) as error:
            self.refused.append(error.code)
            return []
        if message.serial != self.serial:
            return []
        reply = self._answer(message)
        if reply is None:
            return []
        if self.acks_to_lose > 0:
            self.acks_to_lose -= 1
            return []
        return [self._encode(reply)]

    def _next_seq(self) -> int:
        return self.applied_seq + 1 if self.seq_modulus is None else (self.applied_seq + 1) % self.seq_modulus

    def _is_gap(self, purchase_seq: int) -> bool:
        """Beyond the next serial (a one-byte model: up to 128 ahead; further back is a replay)."""
        if self.seq_modulus is None:
            return purchase_seq > self.applied_seq + 1
        ahead = (purchase_seq - self.applied_seq) % self.seq_modulus
        return 1 < ahead < self.seq_modulus // 2

    def apply_purchase(self, purchase_seq: int, volume_litres: int, amount_fen: int | None = None) -> bool:
        """Apply purchase n only if it is the next one; True if it was applied now."""
        if purchase_seq != self._next_seq():
            return False
        self.applied_seq = purchase_seq
        if self.is_money_meter:
            self.credit_fen += amount_fen or 0
            self.applied_fen.append((purchase_seq, amount_fen or 0))
            if self.closed_for_credit and self.has_credit and not self.wire_model.reopen_needs_button:
                self.valve_open, self.closed_for_credit = True, False
        else:
            self.credit_litres += volume_litres
        self.total_purchased_litres += volume_litres
        self.last_volume_litres = volume_litres
        self.applied.append((purchase_seq, volume_litres))
        return True

    def _answer(self, message):  # noqa: ANN001, ANN202
        q = message.frame_seq
        match message:
            case WritePurchase():
                if self.busy_replies > 0:
                    self.busy_replies -= 1
                    return CommandRefused(self.serial, q, cjt188.DI_WRITE_PURCHASE, MeterErrorCode.BUSY)
                if self._is_gap(message.purchase_seq):
                    return CommandRefused(self.serial, q, cjt188.DI_WRITE_PURCHASE, MeterErrorCode.SEQUENCE_GAP)
                self.apply_purchase(message.purchase_seq, message.volume_litres, message.amount_fen)
                if self.is_money_meter:
                    return PurchaseAck(self.serial, q, self.applied_seq, None, self.credit_fen)
                return PurchaseAck(self.serial, q, self.applied_seq, self.credit_litres)
            case SetValve():
                self.valve_open = message.open
                return ValveAck(self.serial, q, self.valve_open)
            case ReadCurrentData():
                return self._current_data(q, datetime(2000, 1, 1))
            case ReadPurchaseRecord():
                return PurchaseRecord(self.serial, q, self.applied_seq, self.last_volume_litres, self.total_purchased_litres)
        return None


class MqttMeter:
    """A simulated meter on a real broker: listens on its down topic, answers on its up topic."""

    def __init__(self, meter: SimulatedMeter, url: str, *, prefix: str) -> None:
        self.meter = meter
        self.prefix = prefix
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._client = mqtt_client(url, f"meter-{meter.serial}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_disconnect = lambda *a: self._subscribed.clear()
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe(topic_down(self.prefix, self.meter.serial), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            replies = self.meter.on_downlink(bytes(message.payload))
        for reply in replies:
            client.publish(topic_up(self.prefix, self.meter.serial), reply, qos=1)

    def start(self, timeout_s: float = 10.0) -> None:
        host, port = self._client._gasworks_address  # type: ignore[attr-defined]
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError(f"meter {self.meter.serial} could not subscribe within {timeout_s} s")

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    def wake(self, clock: datetime) -> None:
        with self._lock:
            frame = self.meter.report(clock)
        self._client.publish(topic_up(self.prefix, self.meter.serial), frame, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
