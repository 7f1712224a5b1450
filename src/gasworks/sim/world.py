"""The city simulator: residents, channels and meters driving the real gasworks, in virtual time.

Everything goes through gasworks' real interfaces: channels call the HTTP API with real signatures
(WeChat Pay v3 RSA + AES-GCM, Alipay RSA2, wallet HMAC, device keys), meters speak CJ/T 188-style
frames over the real transport (in-process, or MQTT), the real worker delivers and watches. The
clock is virtual: a month runs in minutes. One seeded random generator drives every choice, so
the same seed gives the same city and the same outcome.

The simulator also keeps the ground truth gasworks cannot see (what each channel collected, what
each meter really applied), which is how the outcome can prove gasworks told the truth.
"""

import heapq
import itertools
import random
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

with warnings.catch_warnings():  # starlette's note about httpx2 is for its own test users, not our residents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from gasworks.adapters.channels.alipay import AlipayNotifier
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.channels.wechatpay_v3 import WechatPayV3Notifier
from gasworks.adapters.meters.transport import LoopbackTransport, MqttTransport, TransportError, Uplinks
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.clock import FixedClock
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.meter_messages import Alarm
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.workers.channel_jobs import ChannelJobs
from gasworks.entrypoints.workers.worker import Worker
from gasworks.services import access, accounts, channels, kiosks, meter_keys
from gasworks.services.access import Role
from gasworks.services.kiosks import distance_m
from gasworks.services.outbound import StatementFetched, fetch_statement
from gasworks.sim.carrier_fleet import CtwingFleet
from gasworks.sim.city import KIOSK_OPENING_HOURS, City, Household, season_factor_percent
from gasworks.sim.fleet import MqttFleet

LOCAL = ZoneInfo("Asia/Shanghai")
WECHAT_MCHID = "1900000109"
ALIPAY_APP_ID = "2021000000000001"
APIV3_KEY = "gasworks-sim-apiv3-key-32-bytes!"
WALLET_SECRET = "gasworks-sim-wallet-secret-0123456789"
LOW_CREDIT_DAYS = 5  # residents top up when fewer days of gas are left
RETRY_TOP_UP_AFTER = timedelta(days=3)  # a resident whose gas has not come pays again after this


@dataclass(frozen=True)
class GasOffHabits:
    """What a resident whose gas is off (valve closed: credit out, or closed by the meter) does.

    DOMAIN.md gives the behaviour (pay, then press the meter's communication button to force a
    connection, as the utility advised in the Luoyang case; card households write the card at a
    kiosk) but no figures: every number here is an assumption, named so it can be changed.
    """

    pays_only_when_gas_off_share: float = 0.3  # residents who never top up ahead: they pay when the gas stops
    pay_delay_s: tuple[int, int] = (5 * 60, 90 * 60)  # gas off noticed -> paid from the phone
    button_press_probability: float = 0.6  # IoT: pays and then presses the button (the rest wait for the daily report)
    button_press_delay_s: tuple[int, int] = (30, 10 * 60)  # paid -> button pressed: at the meter already, the gas being off
    notice_credit_back_delay_s: tuple[int, int] = (10 * 60, 12 * 3600)  # a meter that reopens only by its button: credit back -> pressed
    kiosk_leave_delay_s: tuple[int, int] = (10 * 60, 120 * 60)  # card: gas off -> sets off for the nearest working kiosk
    walking_m_per_min: int = 70  # about 4 km/h, there and back


@dataclass(frozen=True)
class FaultRates:
    """Each a probability per opportunity (per payment, per meter wake, per meter-day, per day)."""

    notification_lost: float = 0.0  # per merchant-order payment: the channel never notifies
    success_before_booking: float = 0.0  # per wallet payment: "success" shown, the request never arrives
    notification_duplicated: float = 0.0
    notification_delayed: float = 0.0  # hours late: arrives after later ones (reordered)
    meter_sleeps_days: float = 0.0  # per IoT meter-day: silent for 2 to 6 days
    ack_lost: float = 0.0  # per IoT wake
    battery_dies: float = 0.0  # per IoT meter-day: silent for good
    card_lost: float = 0.0  # per card written at a kiosk
    worker_crash: float = 0.0  # per day: the worker dies with frames in hand
    transport_outage: float = 0.0  # per day: the broker is away for 5 to 60 minutes
    order_paid_twice: float = 0.0  # per WeChat order: paid a second time (two devices, one order); refunded by an operator

    @classmethod
    def preset(cls, name: str) -> "FaultRates":
        presets = {
            "none": cls(),
            "default": cls(0.02, 0.01, 0.03, 0.03, 0.002, 0.02, 0.0002, 0.01, 0.05, 0.05, order_paid_twice=0.01),
            "heavy": cls(0.10, 0.05, 0.10, 0.10, 0.01, 0.10, 0.001, 0.05, 0.30, 0.30, order_paid_twice=0.05),
        }
        if name not in presets:
            raise ValueError(f"faults must be one of {', '.join(presets)}")
        return presets[name]


@dataclass
class Collected:
    """A payment as the channel knows it: the ground truth behind its statement."""

    channel_id: str
    channel_txn_id: str
    account_no: str
    amount_fen: int
    paid_at: datetime
    out_trade_no: str | None = None
    reached_gasworks: bool = False
    fault: str = ""
    # How the channel's statement shows it (statement faults, for reconciliation):
    refunded: bool = False  # a refund line follows the payment line
    statement_amount_fen: int | None = None  # the channel's records disagree on the amount
    statement_fee_fen: int | None = None  # a fee other than the agreed one
    refunded_at: datetime | None = None  # the channel paid it back on gasworks' request (its statement that day shows it)
    listed_twice: bool = False
    left_out: bool = False  # missing from the statement altogether

    @property
    def listed_amount_fen(self) -> int:
        return self.amount_fen if self.statement_amount_fen is None else self.statement_amount_fen


@dataclass
class SimOutcome:
    days: int
    households: int
    collected: list[Collected]
    faults_injected: Counter
    truth_checks: int = 0
    truth_violations: list[str] = field(default_factory=list)
    recovered_by_query: int = 0
    booked_from_statements: int = 0  # never notified, booked when the worker fetched the channel's statement the next morning
    refunds_requested: int = 0  # by the simulated operator, for orders paid twice
    refunds_confirmed: int = 0  # by the worker, when the channel's platform said the money went back
    statements_fetched_in_run: int = 0  # by the worker's daily job, while the city ran
    gas_off_spells: list[tuple[str, str, timedelta]] = field(default_factory=list)  # (meter kind, model, valve closed -> gas again)
    still_without_gas: list[tuple[str, str, timedelta]] = field(default_factory=list)  # at the end of the run, how long so far
    button_presses: dict[str, list[datetime]] = field(default_factory=dict)  # meter serial -> when its resident pressed the button
    kiosk_walks_m: list[int] = field(default_factory=list)  # card households without gas: metres to the nearest working kiosk


class CountedUplinks(Uplinks):
    """The worker's uplink queue, counting what arrives: with the fleet's count, whether the wire is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = 0

    def put(self, serial: str, payload: bytes) -> None:
        self.arrived += 1
        super().put(serial, payload)


class FlakyTransport:
    """A transport with simulated outages: while down, frames are refused and reports lost."""

    def __init__(self, inner: LoopbackTransport | MqttTransport, clock: FixedClock) -> None:
        self.inner = inner
        self.uplinks: Uplinks = inner.uplinks
        self.down_until: datetime | None = None
        self.clock = clock
        self.frames_out = 0  # handed to the broker

    def is_down(self) -> bool:
        return self.down_until is not None and self.clock.now() < self.down_until

    def publish(self, serial: str, payload: bytes) -> None:
        if self.is_down():
            raise TransportError("broker away (simulated outage)")
        self.inner.publish(serial, payload)
        self.frames_out += 1

    def publish_in(self, serial: str, payload: bytes, uow) -> None:  # noqa: ANN001 - the dispatcher's unit of work
        """As `publish`, within the dispatcher's unit of work when the inner transport wants it (meters on CTWing)."""
        publish_in = getattr(self.inner, "publish_in", None)
        if publish_in is None or self.is_down():
            self.publish(serial, payload)
        else:
            publish_in(serial, payload, uow)

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()


OPERATOR_HOUR = 9  # local: when the simulated operator looks at the holds
WAKE_SLOT = timedelta(minutes=10)  # over MQTT, meters waking in the same slot report together
QUIET_S = 0.05  # over MQTT, this long without a frame means the meters and the worker are done
WIRE_DRAIN_S_MAX = 5.0  # over MQTT, real seconds to wait for frames on the wire to arrive


class Simulation:
    def __init__(
        self,
        system: System,
        city: City,
        *,
        faults: FaultRates,
        start: datetime,
        mqtt_url: str | None = None,
        fleet_mqtt_url: str | None = None,
        mqtt_topic_prefix: str | None = None,
        habits: GasOffHabits | None = None,
        ctwing_share: float = 0.0,
    ) -> None:
        """`mqtt_url` is gasworks' (the worker's) connection; on a closed broker the simulated meters
        speak through `fleet_mqtt_url` (the `fleet` user) under the broker's `mqtt_topic_prefix`."""
        if not isinstance(system.clock, FixedClock):
            raise TypeError("the simulator needs a FixedClock it can move")
        self.system = system
        self.clock: FixedClock = system.clock
        self.city = city
        self.faults = faults
        self.habits = habits or GasOffHabits()
        self.rng = random.Random(city.seed * 7919 + 1)
        self.residents_rng = random.Random(city.seed * 6_151 + 3)  # gas-off habits: their own draws, the rest of the run unchanged
        self.twice_rng = random.Random(city.seed * 104_729 + 5)  # orders paid twice: their own draws too
        self.gas_off_since: dict[str, datetime] = {}
        self.pays_only_when_gas_off = {h.account_no for h in city.households if self.residents_rng.random() < self.habits.pays_only_when_gas_off_share}
        self.start = start
        self.client = TestClient(create_app(system))
        self.events: list[tuple[datetime, int, str, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.outcome = SimOutcome(0, len(city.households), [], Counter())
        self.by_account = {h.account_no: h for h in city.households}
        self.last_paid: dict[str, datetime] = {}
        self.card_trip_booked: set[str] = set()
        self.asleep_until: dict[str, datetime] = {}
        self.dead: set[str] = set()
        self._txn = itertools.count(1)
        self._truth_checked_until = start
        self._set_up_gasworks()
        from gasworks.sim.channel_platforms import ChannelPlatforms  # it builds on this module's records

        self.platforms = ChannelPlatforms(
            system, self.clock, wechat_platform_key_pem=self.wechat_key, wechat_platform_serial="PUB_KEY_ID_SIM", alipay_key_pem=self.alipay_key,
            wallet_key_id="wo-sim", wallet_secret=WALLET_SECRET,
        )  # fmt: skip
        self.channel_jobs = ChannelJobs(system)  # the worker's calls to those platforms: orders, refunds, yesterday's statements
        iot = [h for h in city.households if h.kind == MeterKind.IOT]
        self.fleet: MqttFleet | None = None
        self.wake_batch: list[Household] = []
        if mqtt_url is None:
            loopback = LoopbackTransport()
            for h in iot:
                loopback.attach(h.serial, h.meter.on_downlink)
            self.transport = FlakyTransport(loopback, self.clock)
        else:
            prefix = mqtt_topic_prefix or f"sim-{uuid.uuid4().hex[:10]}/meters"  # default: a run of its own on a shared broker
            mqtt = MqttTransport(mqtt_url, prefix=prefix, client_id=f"gasworks-sim-{uuid.uuid4().hex[:8]}")
            mqtt.uplinks = self.uplinks_heard = CountedUplinks()
            self.transport = FlakyTransport(mqtt, self.clock)
            self.fleet = MqttFleet(fleet_mqtt_url or mqtt_url, prefix=prefix, meters=[h.meter for h in iot])
            self.transport.start()
            self.fleet.start()
        self.ctwing: CtwingFleet | None = None
        if ctwing_share > 0:  # this share of IoT meters sits behind the local CTWing platform (sim/carrier_fleet.py)
            pick = random.Random(city.seed * 31 + 7)
            self.ctwing = CtwingFleet(system, [h for h in iot if pick.random() < ctwing_share], rng=pick)
            self.transport.inner = self.ctwing.route(self.transport.inner)
        self.worker = Worker(system, self.transport)

    def close(self) -> None:
        """Stop the channels' platforms; disconnect from the broker and the CTWing stub, if any."""
        self.platforms.close()
        if self.ctwing is not None:
            self.ctwing.close()
        if self.fleet is not None:
            self.fleet.stop()
            self.transport.stop()

    def fetch_statements(self) -> list[StatementFetched]:
        """Each online channel's statement for each day of the run, fetched from its platform through
        gasworks' gateway (hash, signature and format checked), imported once and reconciled: the days
        the worker's daily job fetched during the run come back as they were (imported once), the last
        ones as the job would fetch them the next morning. Kiosks and counters have no platform to call:
        their files are carried."""
        fetched = []
        first, last = self.start.astimezone(LOCAL).date(), (self.clock.now() - timedelta(seconds=1)).astimezone(LOCAL).date()
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        for channel_id, day in self.platforms.publish_statements(self.outcome.collected, days):
            gateway = self.system.channel_gateway(channel_id)
            if gateway is None:
                raise RuntimeError(f"the simulated {channel_id} has no gateway configured")
            fetched.append(fetch_statement(channel_id, day, gateway, self.system.new_uow, actor="simulator", timezone=self.system.settings.local_timezone))
        return fetched

    # ---- set-up through the real services and API ----------------------------------------------

    def _set_up_gasworks(self) -> None:
        new_uow, actor = self.system.new_uow, "simulator"
        self.wechat_key, self.alipay_key = new_private_key_pem(), new_private_key_pem()
        channels.add_channel(
            channel_id="wechat", kind=ChannelKind.WECHATPAY_V3, name="微信支付", merchant_id=WECHAT_MCHID, fee_ppm=6_000,
            keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "PUB_KEY_ID_SIM", public_key_pem(self.wechat_key)), (KeyPurpose.APIV3_KEY, "apiv3-sim", APIV3_KEY)],
            uow=new_uow(), actor=actor,
        )  # fmt: skip
        channels.add_channel(
            channel_id="alipay", kind=ChannelKind.ALIPAY, name="支付宝", merchant_id=ALIPAY_APP_ID, fee_ppm=6_000,
            keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "alipay-sim", public_key_pem(self.alipay_key))], uow=new_uow(), actor=actor,
        )  # fmt: skip
        channels.add_channel(
            channel_id="wo-wallet", kind=ChannelKind.WALLET_HMAC, name="沃钱包", merchant_id="",
            keys=[(KeyPurpose.HMAC_SECRET, "wo-sim", WALLET_SECRET)], uow=new_uow(), actor=actor,
        )  # fmt: skip
        channels.add_channel(channel_id="kiosk", kind=ChannelKind.KIOSK, name="自助机", merchant_id="", keys=[], uow=new_uow(), actor=actor)
        channels.add_channel(channel_id="counter", kind=ChannelKind.COUNTER, name="营业厅", merchant_id="", keys=[], uow=new_uow(), actor=actor)
        self.wechat = WechatPayV3Notifier(platform_private_key_pem=self.wechat_key, serial="PUB_KEY_ID_SIM", apiv3_key=APIV3_KEY, mchid=WECHAT_MCHID)
        self.alipay = AlipayNotifier(alipay_private_key_pem=self.alipay_key, app_id=ALIPAY_APP_ID)
        self.wallet = WalletClient(key_id="wo-sim", secret=WALLET_SECRET)
        self.device = {ch: {"Authorization": f"Bearer {access.create_api_key(name=f'sim-{ch}', role=Role.DEVICE, channel_id=ch, uow=new_uow(), actor=actor)[1]}"} for ch in ("kiosk", "counter")}
        self.operator = {"Authorization": f"Bearer {access.create_api_key(name='sim-operator', role=Role.OPERATOR, channel_id=None, uow=new_uow(), actor=actor)[1]}"}
        for community in self.city.kiosks:
            kiosks.add_kiosk(
                Kiosk(community.kiosk_id or "", f"{community.name}自助机", "kiosk", community.name, f"{community.name} 物业楼下", *community.centre, "working", KIOSK_OPENING_HOURS),
                new_uow(), actor=actor,
            )  # fmt: skip
        for h in self.city.households:
            accounts.open_account(
                accounts.OpenAccount(
                    h.account_no, h.name, f"{h.community.name} {int(h.account_no) % 30 + 1} 栋", h.community.name, "G-01", "13800000000", h.serial, h.kind,
                    location=h.location, **({"meter_model": h.model} if h.model else {}),
                ),
                new_uow(), actor=actor,
            )  # fmt: skip
            if h.kind == MeterKind.IOT:  # the installer writes the key gasworks made at registration into the meter
                h.meter.install_key(meter_keys.export_key(h.serial, new_uow(), actor=actor))

    # ---- the event loop --------------------------------------------------------------------------

    def at(self, when: datetime, what: str, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self._seq), what, action))

    def run(self, days: int, progress: Callable[[int], None] | None = None) -> SimOutcome:
        end = self.start + timedelta(days=days)
        for day in range(days):
            midnight = self.start + timedelta(days=day)
            self.at(midnight, "day", lambda d=midnight: self._day(d))
            for hour in range(24):
                self.at(midnight + timedelta(hours=hour, minutes=59), "watch", self._watch)
        for h in self.city.households:
            if h.kind == MeterKind.IOT:
                self.at(self.start + timedelta(seconds=h.wake_second), "wake", lambda h=h: self._wake(h))
        self.platforms.publish_statements([], [self.start.astimezone(LOCAL).date() - timedelta(days=1)])  # before gasworks: no gas payments
        done_days = 0
        while self.events and self.events[0][0] < end:
            when, _, what, action = heapq.heappop(self.events)
            self.clock.move_to(max(when, self.clock.now()))
            action()
            if what == "day":
                if progress:
                    progress(done_days)
                done_days += 1
        self.clock.move_to(max(end, self.clock.now()))
        self._watch()
        if progress:
            progress(done_days)
        self.outcome.days = days
        for h in self.city.households:
            since = self.gas_off_since.get(h.account_no)
            if since is not None:
                self.outcome.still_without_gas.append((h.kind.value, h.model_label, self.clock.now() - since))
        return self.outcome

    def settle(self) -> None:
        for _ in range(100):
            if self.worker.run_once() == 0 and self._quiet():
                return

    def _quiet(self) -> bool:
        """Over MQTT: nothing is on the wire (every frame sent either way has arrived), nothing arrives
        for a moment, and the meters are not busy. In-process: always. Without the first, a meter could
        be put back to sleep before its purchase reached it, and the simulation's clock would move on."""
        if self.fleet is None:
            return True
        deadline = time.monotonic() + WIRE_DRAIN_S_MAX
        while not self.fleet.caught_up(downlinks_sent=self.transport.frames_out, uplinks_taken=self.uplinks_heard.arrived) and time.monotonic() < deadline:
            self.worker.run_once(wait_s=QUIET_S, due_meters=False)  # a frame lost in a broker outage: the meter's next report says it again
        return self.fleet.idle() and self.worker.run_once(wait_s=QUIET_S, due_meters=False) == 0 and self.fleet.idle()

    def _watch(self) -> None:
        self.settle()
        self.worker.watch()
        if self.clock.now().astimezone(LOCAL).hour == OPERATOR_HOUR:
            self._operator_refunds_orders_paid_twice()
        settled = self.platforms.settle_refunds()  # the platform pays back what it took an hour or so ago
        if settled:
            for c in self.outcome.collected:
                if c.channel_id == "wechat" and c.channel_txn_id in settled:
                    c.refunded_at = self.clock.now()
        calls = self.channel_jobs.run_once()
        self.outcome.recovered_by_query += calls.booked
        self.outcome.refunds_confirmed += calls.refunds_confirmed
        self.outcome.statements_fetched_in_run += calls.statements_imported
        asked, served = self.platforms.orders_asked(), self.platforms.statements_served()
        for c in self.outcome.collected:
            if c.reached_gasworks:
                continue
            if c.out_trade_no and (c.channel_id, c.out_trade_no) in asked:  # asked about, paid there: booked by that answer
                c.reached_gasworks = True
            elif (c.channel_id, c.paid_at.astimezone(LOCAL).date()) in served:  # on a statement gasworks reconciled: booked from it
                c.reached_gasworks = True
                self.outcome.booked_from_statements += 1
        self._check_the_truth()

    # ---- days, meters, residents -------------------------------------------------------------------

    def _day(self, midnight: datetime) -> None:
        f, rng = self.faults, self.rng
        local_day = midnight.astimezone(LOCAL).date()
        self.platforms.publish_statements(self.outcome.collected, [local_day - timedelta(days=1)])  # yesterday's bills, for 10:00
        for h in self.city.households:
            litres = h.litres_per_day * season_factor_percent(local_day) // 100 * rng.randrange(70, 131) // 100
            h.meter.use(litres)
            if h.kind == MeterKind.CARD:
                if h.meter.credit_litres <= 0:
                    h.meter.valve_open = False  # a card meter closes itself when its credit is gone
                self._observe_gas(h)
                self._maybe_top_up(h)
            else:
                self._observe_gas(h)  # a money meter closes its own valve past its overdraft
            if h.kind == MeterKind.IOT and h.serial not in self.dead:
                if rng.random() < f.battery_dies:
                    self.dead.add(h.serial)
                    self.outcome.faults_injected["battery dies (meter silent for good)"] += 1
                elif h.serial not in self.asleep_until and rng.random() < f.meter_sleeps_days:
                    self.asleep_until[h.serial] = midnight + timedelta(days=rng.randrange(2, 7))
                    self.outcome.faults_injected["meter sleeps for days"] += 1
        if rng.random() < f.worker_crash:
            self.at(midnight + timedelta(seconds=rng.randrange(86_400)), "crash", self._crash_worker)
        if rng.random() < f.transport_outage:
            self.at(midnight + timedelta(seconds=rng.randrange(86_400)), "outage", self._transport_outage)

    def _crash_worker(self) -> None:
        """The worker dies holding frames it had not handled; a new one starts."""
        while self.transport.uplinks.get(0) is not None:
            pass
        self.worker = Worker(self.system, self.transport)
        self.outcome.faults_injected["worker crash"] += 1

    def _transport_outage(self) -> None:
        self.transport.down_until = self.clock.now() + timedelta(minutes=self.rng.randrange(5, 61))
        self.outcome.faults_injected["broker outage"] += 1

    def _wake(self, h: Household) -> None:
        now = self.clock.now()
        interval_s = h.meter.wire_model.report_interval_s  # its model's own rhythm (daily for every built-in model)
        self.at(now + timedelta(seconds=interval_s + self.rng.randrange(-600, 601)), "wake", lambda: self._wake(h))
        if h.serial in self.dead:
            return
        if self.asleep_until.get(h.serial, now) > now:
            return
        self.asleep_until.pop(h.serial, None)
        if self.rng.random() < self.faults.ack_lost:
            h.meter.acks_to_lose = 1
            self.outcome.faults_injected["meter acknowledgement lost"] += 1
        h.meter.alarms = Alarm.LOW_BATTERY if h.meter.battery_mv < 3_350 else Alarm(0)
        if self.ctwing is not None and self.ctwing.has(h.serial):  # reports and answers through the platform's pushes
            self.ctwing.wake(h.serial, self.settle)
            self._asleep_again(h)
            return
        if self.fleet is not None:
            if not self.wake_batch:
                self.at(now + WAKE_SLOT, "wake slot", self._wake_slot)
            self.wake_batch.append(h)
            return
        report = h.meter.report(now)
        if not self.transport.is_down():
            self.transport.uplinks.put(h.serial, report)
            while self.transport.uplinks.pending():  # the report, then each acknowledgement it leads to
                self.worker.run_once(due_meters=False)
        self._asleep_again(h)

    def _wake_slot(self) -> None:
        """Over MQTT: the meters of this slot report together through the broker, then sleep."""
        batch, self.wake_batch = self.wake_batch, []
        if not self.transport.is_down():
            assert self.fleet is not None
            for h in batch:
                self.fleet.report(h.serial, self.clock.now())
            while not self._quiet():
                pass
        for h in batch:
            self._asleep_again(h)

    def _asleep_again(self, h: Household) -> None:
        h.meter.sleep()
        h.meter.acks_to_lose = 0
        self._observe_gas(h)
        if h.meter.closed_for_credit and h.meter.has_credit:  # the display says: credit back, press the button to reopen
            delay = timedelta(seconds=self.residents_rng.randrange(*self.habits.notice_credit_back_delay_s))
            self.at(self.clock.now() + delay, "button", lambda: self._press_button(h))
        self._maybe_top_up(h)

    # ---- residents without gas -----------------------------------------------------------------

    def _observe_gas(self, h: Household) -> None:
        """Gas is off while the valve is closed; a spell ends when it is open again. A resident whose
        gas has just gone off acts on it (GasOffHabits)."""
        now = self.clock.now()
        since = self.gas_off_since.get(h.account_no)
        if not h.meter.valve_open and since is None:
            self.gas_off_since[h.account_no] = now
            self._gas_went_off(h)
        elif h.meter.valve_open and since is not None:
            del self.gas_off_since[h.account_no]
            self.outcome.gas_off_spells.append((h.kind.value, h.model_label, now - since))

    def _gas_went_off(self, h: Household) -> None:
        habits, rng, now = self.habits, self.residents_rng, self.clock.now()
        if h.kind == MeterKind.CARD:
            leave = now + timedelta(seconds=rng.randrange(*habits.kiosk_leave_delay_s))
            self.at(leave, "walk to the kiosk", lambda: self._walk_to_kiosk(h))
            return
        last = self.last_paid.get(h.account_no)
        if last is not None and now - last < RETRY_TOP_UP_AFTER:  # paid already: the gas is on its way; the button may hurry it
            if rng.random() < habits.button_press_probability:
                self.at(now + timedelta(seconds=rng.randrange(*habits.button_press_delay_s)), "button", lambda: self._press_button(h))
            return
        self.last_paid[h.account_no] = now
        self.at(now + timedelta(seconds=rng.randrange(*habits.pay_delay_s)), "pay (gas off)", lambda: self._pay_then_maybe_press(h))

    def _pay_then_maybe_press(self, h: Household) -> None:
        self._pay_online(h)
        if self.residents_rng.random() < self.habits.button_press_probability:
            self.at(self.clock.now() + timedelta(seconds=self.residents_rng.randrange(*self.habits.button_press_delay_s)), "button", lambda: self._press_button(h))

    def _press_button(self, h: Household) -> None:
        """The meter wakes at once and reports (if its battery lives), then sleeps again; its daily wake is unchanged."""
        now = self.clock.now()
        self.outcome.button_presses.setdefault(h.serial, []).append(now)
        if h.serial in self.dead:
            return
        self.asleep_until.pop(h.serial, None)  # the button wakes even a meter that was sleeping through its reports
        if self.ctwing is not None and self.ctwing.has(h.serial):  # its module reports through the platform, which hands it what it holds
            h.meter.button_pressed()
            self.ctwing.wake(h.serial, self.settle)
            self._asleep_again(h)
            return
        if self.fleet is not None:  # a press reports at once, not in the next wake slot: it is what the resident waits on
            h.meter.button_pressed()
            if not self.transport.is_down():
                self.fleet.report(h.serial, now)
                while not self._quiet():
                    pass
            self._asleep_again(h)
            return
        report = h.meter.press_button(now)
        if not self.transport.is_down():
            self.transport.uplinks.put(h.serial, report)
            while self.transport.uplinks.pending():
                self.worker.run_once(due_meters=False)
        self._asleep_again(h)

    def _walk_to_kiosk(self, h: Household) -> None:
        """A card household without gas walks to the nearest working kiosk, pays and writes the card there,
        and inserts it when home again."""
        working = [c for c in self.city.kiosks if c.kiosk_id]
        if not working:
            return
        metres = min(distance_m(h.location, c.centre) for c in working)
        self.outcome.kiosk_walks_m.append(metres)
        walk = timedelta(minutes=max(1, metres // self.habits.walking_m_per_min))
        self.card_trip_booked.discard(h.account_no)  # this trip replaces any planned one
        self.last_paid[h.account_no] = self.clock.now()
        self.at(self.clock.now() + walk, "card desk (gas off)", lambda: self._card_desk(h, True, walk_home=walk))

    def _maybe_top_up(self, h: Household) -> None:
        now = self.clock.now()
        if h.meter.days_of_gas_left(h.litres_per_day) >= LOW_CREDIT_DAYS or h.account_no in self.pays_only_when_gas_off:
            return
        last = self.last_paid.get(h.account_no)
        if last is not None and now - last < RETRY_TOP_UP_AFTER:
            return  # paid recently: waiting for the gas
        self.last_paid[h.account_no] = now
        delay = timedelta(minutes=self.rng.randrange(10, 36 * 60))
        if h.kind == MeterKind.CARD and h.channel in ("kiosk", "counter"):
            self._plan_card_trip(h, now + delay, pay_there=True)
        else:
            self.at(now + delay, "pay", lambda: self._pay_online(h))

    # ---- paying --------------------------------------------------------------------------------

    def _txn_id(self, prefix: str) -> str:
        return f"{prefix}{self.city.seed:04d}{next(self._txn):09d}"

    def _pay_online(self, h: Household) -> None:
        now, f, rng = self.clock.now(), self.faults, self.rng
        channel = h.channel if h.channel in ("wo-wallet", "wechat", "alipay") else "wechat"
        collected = Collected(channel, self._txn_id({"wo-wallet": "WO", "wechat": "42", "alipay": "2026"}[channel]), h.account_no, h.top_up_fen, now)
        self.outcome.collected.append(collected)
        if channel == "wo-wallet":
            self.platforms.collected(collected)
            if rng.random() < f.success_before_booking:
                collected.fault = "wallet showed success; its request never reached gasworks"
                self.outcome.faults_injected["wallet success before booking (request lost)"] += 1
            else:
                self._deliver(collected, lambda: self._wallet_post(collected))
        else:
            # The resident orders in the app where they bound their account (number + holder's name).
            order = self.client.post("/v1/orders", json={"channel_id": channel, "account_no": h.account_no, "amount_fen": h.top_up_fen, "holder_name": h.name})
            collected.out_trade_no = order.json()["out_trade_no"]
            self.platforms.collected(collected)
            if channel == "wechat" and self.twice_rng.random() < f.order_paid_twice:
                self._pay_order_again(collected)
            if rng.random() < f.notification_lost:
                collected.fault = "channel never notified"
                self.outcome.faults_injected["notification lost"] += 1
            else:
                self._deliver(collected, lambda: self._notify(collected))
        if h.kind == MeterKind.CARD:
            self._plan_card_trip(h, now + timedelta(minutes=rng.randrange(60, 4 * 24 * 60)), pay_there=False)

    def _pay_order_again(self, first: Collected) -> None:
        """The resident pays the same order again on a second device: the platform takes the money,
        gasworks holds it (ORDER_ALREADY_PAID) and, the next morning, an operator refunds it."""
        self.outcome.faults_injected["order paid twice"] += 1
        again = Collected(first.channel_id, self._txn_id("42"), first.account_no, first.amount_fen, self.clock.now(), out_trade_no=first.out_trade_no, fault="order paid twice")
        self.outcome.collected.append(again)
        self.platforms.collected(again)
        self._deliver(again, lambda: self._notify(again))

    def _operator_refunds_orders_paid_twice(self) -> None:
        """Each morning an operator refunds the second payments of orders paid twice (GET /v1/holds, then a decision)."""
        held = self.client.get("/v1/holds", params={"limit": 500}, headers=self.operator).json()
        for payment in held:
            if payment["hold_reason"] == "ORDER_ALREADY_PAID":
                self.client.post(f"/v1/holds/{payment['id']}/decisions", headers=self.operator, json={"decision": "refund", "reason": "paid twice for one order"})
                self.outcome.refunds_requested += 1

    def _deliver(self, collected: Collected, send: Callable[[], None]) -> None:
        rng, f, now = self.rng, self.faults, self.clock.now()
        if rng.random() < f.notification_delayed:
            self.outcome.faults_injected["notification delayed (reordered)"] += 1
            self.at(now + timedelta(minutes=rng.randrange(60, 12 * 60)), "late notification", send)
        else:
            send()
        if rng.random() < f.notification_duplicated:
            self.outcome.faults_injected["notification duplicated"] += 1
            self.at(now + timedelta(seconds=rng.randrange(15, 600)), "duplicate notification", send)

    def _wallet_post(self, c: Collected) -> None:
        path = "/v1/channels/wo-wallet/payments"
        headers, body = self.wallet.payment(path=path, txn_id=c.channel_txn_id, account_no=c.account_no, amount_fen=c.amount_fen, at=self.clock.now(), paid_at=c.paid_at)
        reply = self.client.post(path, content=body, headers=headers)
        c.reached_gasworks |= reply.status_code == 200

    def _notify(self, c: Collected) -> None:
        assert c.out_trade_no is not None
        if c.channel_id == "wechat":
            headers, body = self.wechat.notification(out_trade_no=c.out_trade_no, transaction_id=c.channel_txn_id, amount_fen=c.amount_fen, at=self.clock.now(), paid_at=c.paid_at)
        else:
            headers, body = self.alipay.notification(out_trade_no=c.out_trade_no, trade_no=c.channel_txn_id, amount_fen=c.amount_fen, at=self.clock.now(), paid_at=c.paid_at)
        reply = self.client.post(f"/v1/channels/{c.channel_id}/notify", content=body, headers=headers)
        c.reached_gasworks |= reply.status_code == 200 and reply.content != b"failure"  # WeChat refuses with 4xx, Alipay with "failure"

    # ---- card meters at kiosks ---------------------------------------------------------------

    def _plan_card_trip(self, h: Household, when: datetime, *, pay_there: bool) -> None:
        if h.account_no in self.card_trip_booked:
            return
        self.card_trip_booked.add(h.account_no)
        self.at(when, "card desk", lambda: self._card_desk(h, pay_there))

    def _card_desk(self, h: Household, pay_there: bool, *, walk_home: timedelta | None = None) -> None:
        assert h.card is not None
        self.card_trip_booked.discard(h.account_no)
        channel = h.channel if h.channel in ("kiosk", "counter") else "kiosk"
        device = self.device[channel]
        if pay_there:
            collected = Collected(channel, self._txn_id("K"), h.account_no, h.top_up_fen, self.clock.now())
            self.outcome.collected.append(collected)
            self._deliver(collected, lambda: self._device_pay(collected, device))
        read = self.client.post("/v1/cards/reads", headers=device, json={
            "card_no": h.card.card_no, "meter_serial": h.serial, "card_purchase_seq": h.card.purchase_seq, "meter_applied_seq": h.card.meter_applied_seq,
            "remaining_litres": h.meter.credit_litres,
        })  # fmt: skip
        if read.status_code != 200:
            return
        for purchase in read.json()["to_write"]:
            h.card.purchase_seq = purchase["purchase_seq"]
            h.card.pending.append((purchase["purchase_seq"], purchase["volume_litres"]))
            self.client.post("/v1/cards/writes", headers=device, json={
                "card_no": h.card.card_no, "meter_serial": h.serial, "purchase_seq": purchase["purchase_seq"], "card_purchase_seq_after": h.card.purchase_seq,
            })  # fmt: skip
        if not h.card.pending:
            return
        if self.rng.random() < self.faults.card_lost:
            self.outcome.faults_injected["card lost after writing"] += 1
            self.at(self.clock.now() + timedelta(hours=self.rng.randrange(4, 48)), "replace card", lambda: self._replace_card(h))
            return
        home = walk_home if walk_home is not None else timedelta(minutes=self.rng.randrange(10, 12 * 60))  # without gas, straight home
        self.at(self.clock.now() + home, "insert card", lambda: self._insert_card(h))

    def _device_pay(self, c: Collected, device: dict) -> None:
        body = {"txn_id": c.channel_txn_id, "account_no": c.account_no, "amount_fen": c.amount_fen, "method": "cash", "paid_at": c.paid_at.isoformat()}
        reply = self.client.post("/v1/devices/payments", headers=device, json=body)
        c.reached_gasworks |= reply.status_code == 200

    def _insert_card(self, h: Household) -> None:
        assert h.card is not None
        for purchase_seq, litres in h.card.pending:
            h.meter.apply_purchase(purchase_seq, litres)
        h.card.pending.clear()
        h.card.meter_applied_seq = h.meter.applied_seq
        if h.meter.credit_litres > 0:
            h.meter.valve_open = True
        self._observe_gas(h)
        # The card comes back to gasworks on the resident's next visit; most pass by within days.
        self._plan_card_trip(h, self.clock.now() + timedelta(hours=self.rng.randrange(6, 10 * 24)), pay_there=False)

    def _replace_card(self, h: Household) -> None:
        assert h.card is not None
        new_no = f"IR{uuid.UUID(int=self.rng.getrandbits(128)).hex[:10].upper()}"
        replaced = self.client.post(f"/v1/meters/{h.serial}/card", headers=self.operator, json={"card_no": new_no, "reason": "lost"})
        if replaced.status_code != 200:
            return
        start = replaced.json()["start_purchase_seq"]
        h.card.card_no, h.card.purchase_seq, h.card.meter_applied_seq = new_no, start, start
        h.card.pending.clear()
        self._plan_card_trip(h, self.clock.now() + timedelta(hours=self.rng.randrange(1, 24)), pay_there=False)

    # ---- the truth ---------------------------------------------------------------------------

    def _check_the_truth(self) -> None:
        """Nothing gasworks calls applied may be unapplied at the meter (the simulator knows the meter)."""
        now = self.clock.now()
        with self.system.new_uow() as uow:
            applied = uow.meter_commands.applied_credits_since(self._truth_checked_until, limit=1_000_000)
        for command in applied:
            household = self.by_account[command.account_no]
            self.outcome.truth_checks += 1
            if (command.purchase_seq or 0) > household.meter.applied_seq:
                self.outcome.truth_violations.append(f"purchase #{command.purchase_seq} of meter {household.serial} shown applied; the meter has applied #{household.meter.applied_seq}")
        # Applied is final and a meter never un-applies: each order is checked once, soon after it was applied.
        self._truth_checked_until = now


def simulation_start(year: int = 2026, month: int = 11, day: int = 1) -> datetime:
    """Local midnight of the first simulated day, in UTC."""
    return datetime(year, month, day, tzinfo=LOCAL).astimezone(UTC)
