"""A city of up to a million households, kept as arrays, driving the real gasworks for a day or more.

The event simulator (sim/world.py) keeps a Python object per household and sends each report in a
transaction of its own: right for a few thousand households and every fault, hours for a million.
Here the households' state is numpy arrays (credit, cumulative volume, applied purchase serial,
valve, battery, frame counters, keys); the register is opened through `bulk_accounts.open_accounts`
(COPY, the same rows as one by one); each IoT meter's daily report is a real CJ/T 188 frame sealed
with its own key (SM4-CMAC, the firmware's `MeterKeyring`) and travels over the in-process
transport into the worker's batch path (services/bulk_uplinks.py). A household that pays becomes a
full `SimulatedMeter` (the firmware's own code answers the worker's commands), kept in step with
the arrays; only those few thousand are objects.

Payments go through the real intake: a wallet-signed (HMAC) request verified and booked by
`take_channel_payment`, each in its own transaction, as the HTTP route does. Card households pay
the same way; their kiosk visits are the event simulator's, so here their purchases wait for the
card, which is what gasworks tells them. No faults are injected on this path (the event simulator
does that); the point here is scale, with the money check and the meters' truth at the end.
"""

import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, InboundRequest
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.meters.frame_security import MeterKeyring
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.clock import FixedClock
from gasworks.domain.meter_messages import Alarm, CurrentData
from gasworks.domain.meter_security import DEFAULT_METER_MODEL, MeterFrameCounters, model_profile
from gasworks.domain.payments import PaymentState
from gasworks.entrypoints.workers.batch_worker import BatchWorker
from gasworks.services import accounts, bulk_accounts, channels
from gasworks.services.checks import CheckReport, check_ledger
from gasworks.services.notifications import take_channel_payment
from gasworks.sim.city import CITY_CENTRE, HOUSEHOLDS_PER_COMMUNITY, STREET_NAMES, SUFFIXES, TOP_UPS_FEN, season_factor_percent
from gasworks.sim.meter import SimulatedMeter

OPEN_BATCH = 20_000  # accounts per transaction while opening the register
SLOT = timedelta(minutes=5)  # reports and payments of one slot are taken together, at its start
WALLET_ID, WALLET_KEY_ID, WALLET_SECRET = "wo-wallet", "wo-bulk", "gasworks-bulk-city-wallet-secret-0123456789"
WALLET_PATH = f"/v1/channels/{WALLET_ID}/payments"
LOW_CREDIT_DAYS = 5  # residents top up when fewer days of gas are left
RETRY_TOP_UP_AFTER_S = 3 * 86_400
SERIAL_BASE = 30_000_000_000_000
WATCH_EVERY = timedelta(hours=1)
PAY_CONCURRENCY = 8  # payments taken at once, as channels' requests arrive at a server together


class CityTransport(LoopbackTransport):
    """The in-process transport, where a meter still kept in the columns is made an object when a frame comes for it."""

    def __init__(self, listener_of: Callable[[str], Callable[[bytes], list[bytes]] | None]) -> None:
        super().__init__()
        self._listener_of = listener_of

    def publish(self, serial: str, payload: bytes) -> None:
        listener = self._listener_of(serial)
        if listener is None:
            return  # nobody listening: the frame is gone, as on a broker
        for reply in listener(payload):
            self.uplinks.put(serial, reply)


def serial_of(i: int) -> str:
    return f"{SERIAL_BASE + i:014d}"


def account_of(i: int) -> str:
    return f"43{i:08d}"


class BulkCity:
    """Households as columns: index i is account 43{i:08d} with meter 3{i:013d}. Same seed, same city."""

    def __init__(self, households: int, *, seed: int, iot_percent: int = 60) -> None:
        rng = np.random.default_rng(seed)
        n = self.n = households
        self.seed = seed
        self.rng = rng
        self.is_iot = rng.integers(0, 100, n) < iot_percent
        self.litres_per_day = rng.integers(300, 1_400, n, dtype=np.int64)
        # Days of gas left at the start: a few percent of households run low on any day (~30k payments a day per million).
        self.credit_litres = self.litres_per_day * rng.integers(4, 50, n, dtype=np.int64)
        self.cumulative_litres = np.zeros(n, dtype=np.int64)
        self.applied_seq = np.zeros(n, dtype=np.int64)
        self.valve_open = np.ones(n, dtype=bool)
        self.battery_mv = rng.integers(3_300, 3_700, n, dtype=np.int64)
        self.wake_second = rng.integers(0, 86_400, n, dtype=np.int64)
        self.top_up_fen = np.asarray(TOP_UPS_FEN, dtype=np.int64)[rng.integers(0, len(TOP_UPS_FEN), n)]
        self.uplink_counter = np.zeros(n, dtype=np.int64)  # the meter's last uplink counter sent
        self.downlink_counter = np.zeros(n, dtype=np.int64)  # the last downlink counter it took
        self.frame_seq = np.zeros(n, dtype=np.int64)
        self.keys = np.zeros((n, 16), dtype=np.uint8)  # written by the installer from gasworks' export
        self.last_paid_s = np.full(n, -(10**12), dtype=np.int64)  # seconds since the start
        self.communities = max(1, -(-n // HOUSEHOLDS_PER_COMMUNITY))
        offsets = np.random.default_rng(seed + 1).uniform(-0.06, 0.06, (self.communities, 2))
        self.community_centres = offsets + np.asarray(CITY_CENTRE)

    def community_name(self, c: int) -> str:
        return f"{STREET_NAMES[c % len(STREET_NAMES)]}{SUFFIXES[c // len(STREET_NAMES) % len(SUFFIXES)]}{c // 40 + 1}期"

    def open_command(self, i: int) -> accounts.OpenAccount:
        c = i % self.communities
        name = self.community_name(c)
        lat, lon = self.community_centres[c]
        return accounts.OpenAccount(
            account_of(i), "王" + "伟芳娜敏静丽强磊军洋"[i % 10], f"{name} {i % 30 + 1} 栋", name, "G-01", "13800000000", serial_of(i),
            MeterKind.IOT if self.is_iot[i] else MeterKind.CARD, location=(round(float(lat), 6), round(float(lon), 6)),
        )  # fmt: skip


@dataclass
class BulkOutcome:
    households: int
    iot_meters: int
    days: int = 0
    reports_sent: int = 0
    reports_in_batches: int = 0
    uplinks_one_by_one: int = 0
    payments_made: int = 0
    payments_fen: int = 0
    payments_booked: int = 0  # the channel got a 'booked' answer (exactly once: never a duplicate here)
    open_s: float = 0.0
    run_s: float = 0.0
    paying_s: float = 0.0  # of run_s: the residents' payments through the intake
    reporting_s: float = 0.0  # of run_s: reports sealed, taken by the worker, and the credits sent back
    watching_s: float = 0.0  # of run_s: the worker's watchdog passes
    purchases_applied_at_meters: int = 0
    litres_applied_at_meters: int = 0
    purchases_proven_applied: int = 0
    truth_violations: list[str] = field(default_factory=list)
    ledger: CheckReport | None = None

    @property
    def peak_rss_mib(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


class BulkSimulation:
    def __init__(self, system: System, city: BulkCity, *, start: datetime) -> None:
        if not isinstance(system.clock, FixedClock):
            raise TypeError("the simulator needs a FixedClock it can move")
        self.system, self.city, self.start = system, city, start
        self.clock: FixedClock = system.clock
        self.transport = CityTransport(self._listening_meter)
        self.worker: BatchWorker | None = None
        self.wallet = WalletClient(key_id=WALLET_KEY_ID, secret=WALLET_SECRET)
        self.meters: dict[int, SimulatedMeter] = {}  # households that paid: the firmware object is their truth from then on
        self.outcome = BulkOutcome(city.n, int(city.is_iot.sum()))
        self.scheme = model_profile(DEFAULT_METER_MODEL).mac_scheme
        self._txn = 0
        self._pool = ThreadPoolExecutor(PAY_CONCURRENCY, thread_name_prefix="resident")
        self._waking: set[int] = set()  # the households whose meters report in this slot
        self._woken: list[SimulatedMeter] = []

    # ---- the register ----------------------------------------------------------------------------

    def open_accounts(self, progress: Callable[[int], None] | None = None) -> None:
        started = time.perf_counter()
        new_uow = self.system.new_uow
        channels.add_channel(channel_id=WALLET_ID, kind=ChannelKind.WALLET_HMAC, name="沃钱包", merchant_id="",
                             keys=[(KeyPurpose.HMAC_SECRET, WALLET_KEY_ID, WALLET_SECRET)], uow=new_uow(), actor="simulator")  # fmt: skip
        for first in range(0, self.city.n, OPEN_BATCH):
            last = min(first + OPEN_BATCH, self.city.n)
            keys = bulk_accounts.open_accounts([self.city.open_command(i) for i in range(first, last)], new_uow(), actor="simulator", export_keys=True)
            for key in keys:  # the installer writes each key into its meter
                self.city.keys[int(key.serial) - SERIAL_BASE] = np.frombuffer(key.key, dtype=np.uint8)
            if progress:
                progress(last)
        self.worker = BatchWorker(self.system, self.transport)
        self.outcome.open_s = time.perf_counter() - started

    # ---- the days ------------------------------------------------------------------------------

    def run(self, days: int, progress: Callable[[int], None] | None = None) -> BulkOutcome:
        """`progress(events done)`; `events_per_day` says how many to expect."""
        assert self.worker is not None, "open the accounts first"
        started = time.perf_counter()
        pays: list[tuple[int, int]] = []  # (second since start, household), kept sorted by time
        done = 0
        for day in range(days):
            midnight = self.start + timedelta(days=day)
            self.clock.move_to(max(midnight, self.clock.now()))
            pays = sorted(pays + self._use_gas_and_plan_payments(day, midnight))
            iot = np.flatnonzero(self.city.is_iot)
            wake_s = day * 86_400 + self.city.wake_second[iot]
            order = np.argsort(wake_s, kind="stable")
            iot, wake_s = iot[order], wake_s[order]
            slot_s = int(SLOT.total_seconds())
            next_watch = midnight + WATCH_EVERY
            for slot_start in range(day * 86_400, (day + 1) * 86_400, slot_s):
                now = self.start + timedelta(seconds=slot_start)
                self.clock.move_to(max(now, self.clock.now()))
                due = 0
                while due < len(pays) and pays[due][0] < slot_start + slot_s:
                    due += 1
                paying = time.perf_counter()
                self._pay([i for _, i in pays[:due]])
                done += due
                del pays[:due]
                lo, hi = np.searchsorted(wake_s, [slot_start, slot_start + slot_s])
                reporting = time.perf_counter()
                self._wake(iot[lo:hi], now)
                done += int(hi - lo)
                watching = time.perf_counter()
                if now >= next_watch:
                    self.worker.watch()
                    next_watch += WATCH_EVERY
                self.outcome.paying_s += reporting - paying
                self.outcome.reporting_s += watching - reporting
                self.outcome.watching_s += time.perf_counter() - watching
                if progress:
                    progress(done)
            self.clock.move_to(max(midnight + timedelta(days=1), self.clock.now()))
        self.worker.watch()
        self.outcome.days = days
        self.outcome.run_s = time.perf_counter() - started
        self._check_the_truth()
        return self.outcome

    def events_per_day(self) -> int:
        """Meter reports a day plus a rough count of payments (for the progress bar's total)."""
        return self.outcome.iot_meters + self.city.n // 30

    def _use_gas_and_plan_payments(self, day: int, midnight: datetime) -> list[tuple[int, int]]:
        city, rng = self.city, self.city.rng
        local_day = (midnight + timedelta(hours=8)).date()  # Asia/Shanghai, where the city is
        litres = city.litres_per_day * season_factor_percent(local_day) // 100 * rng.integers(70, 131, city.n) // 100
        burning = city.valve_open.copy()
        city.cumulative_litres += np.where(burning, litres, 0)
        city.credit_litres -= np.where(burning, litres, 0)
        for i, meter in self.meters.items():  # the objects are the truth for those that paid
            meter.use(int(litres[i]))
        card_dry = ~city.is_iot & (city.credit_litres <= 0)
        city.valve_open[card_dry] = False  # a card meter closes itself when its credit is gone
        for i, meter in self.meters.items():
            if not city.is_iot[i] and meter.credit_litres <= 0:
                meter.valve_open = False
        credit = city.credit_litres.copy()
        for i, meter in self.meters.items():
            credit[i] = meter.credit_litres
        now_s = day * 86_400
        low = np.flatnonzero((credit < LOW_CREDIT_DAYS * city.litres_per_day) & (now_s - city.last_paid_s >= RETRY_TOP_UP_AFTER_S))
        city.last_paid_s[low] = now_s
        delays = rng.integers(600, 36 * 3600, low.size)
        return list(zip((now_s + delays).tolist(), low.tolist(), strict=True))

    def _meter(self, i: int) -> SimulatedMeter:
        """The household's meter as a firmware object, made from its columns the first time it is needed."""
        meter = self.meters.get(i)
        if meter is None:
            c = self.city
            meter = SimulatedMeter(
                serial_of(i), credit_litres=int(c.credit_litres[i]), cumulative_litres=int(c.cumulative_litres[i]), applied_seq=int(c.applied_seq[i]),
                valve_open=bool(c.valve_open[i]), battery_mv=int(c.battery_mv[i]),
            )  # fmt: skip
            meter._frame_seq = int(c.frame_seq[i])
            if c.is_iot[i]:
                counters = MeterFrameCounters(1, int(c.uplink_counter[i]), int(c.downlink_counter[i]))
                meter.keyring = MeterKeyring(self.scheme, c.keys[i].tobytes(), counters)
            self.meters[i] = meter
        return meter

    def _listening_meter(self, serial: str) -> Callable[[bytes], list[bytes]] | None:
        """A downlink for a meter still in the columns (a valve command its report called for): it listens only while awake."""
        i = int(serial) - SERIAL_BASE
        if not (0 <= i < self.city.n) or not self.city.is_iot[i]:
            return None
        meter = self._meter(i)
        if i in self._waking and not meter.awake:
            meter.awake = True
            self._woken.append(meter)
        return meter.on_downlink

    def _pay(self, households: list[int]) -> None:
        """Residents of this slot pay from their phones at once: the intake takes them concurrently, as a server would."""
        if not households:
            return
        now = self.clock.now()
        with self.system.new_uow() as uow:
            channel = uow.channels.get(WALLET_ID)
        assert channel is not None
        requests = []
        for i in households:
            self._txn += 1
            amount_fen = int(self.city.top_up_fen[i])
            headers, body = self.wallet.payment(path=WALLET_PATH, txn_id=f"WOB{self.city.seed:04d}{self._txn:09d}", account_no=account_of(i), amount_fen=amount_fen, at=now)
            requests.append(InboundRequest("POST", WALLET_PATH, {k.lower(): v for k, v in headers.items()}, body))
            self.outcome.payments_made += 1
            self.outcome.payments_fen += amount_fen
            self._meter(i)  # from now on it listens for its credit (IoT) or keeps its card's count (card)

        def take(request: InboundRequest) -> bool:
            accepted = take_channel_payment(channel, request, BILL_PAYMENT_DECODERS, self.system.new_uow, skew_s=self.system.settings.notification_clock_skew_s)
            return accepted.state == PaymentState.BOOKED and not accepted.duplicate

        self.outcome.payments_booked += sum(self._pool.map(take, requests))

    def _wake(self, households: np.ndarray, now: datetime) -> None:
        """Each meter of the slot seals its report; the worker takes them a batch at a time."""
        assert self.worker is not None
        c = self.city
        clock = now.replace(tzinfo=None, microsecond=0)
        self._waking, self._woken = set(households.tolist()), []
        for i in households.tolist():
            meter = self.meters.get(i)
            if meter is not None:
                meter.alarms = Alarm.LOW_BATTERY if meter.battery_mv < 3_350 else Alarm(0)
                frame = meter.report(now)
                self._woken.append(meter)
            else:
                c.frame_seq[i] = (c.frame_seq[i] + 1) % 256
                keyring = MeterKeyring(self.scheme, c.keys[i].tobytes(), MeterFrameCounters(1, int(c.uplink_counter[i])))
                frame = keyring.seal(CurrentData(
                    serial=serial_of(i), frame_seq=int(c.frame_seq[i]), cumulative_litres=int(c.cumulative_litres[i]), credit_litres=int(c.credit_litres[i]),
                    last_applied_seq=int(c.applied_seq[i]), valve_open=bool(c.valve_open[i]), battery_mv=int(c.battery_mv[i]),
                    alarms=Alarm.LOW_BATTERY if c.battery_mv[i] < 3_350 else Alarm(0), meter_clock=clock,
                ))  # fmt: skip
                c.uplink_counter[i] = keyring.counters.uplink_counter_sent
            self.transport.uplinks.put(serial_of(i), frame)
            self.outcome.reports_sent += 1
            if self.transport.uplinks.pending() >= 2_000:
                self._drain()
        self._drain()
        for meter in self._woken:
            meter.sleep()
        self._waking, self._woken = set(), []

    def _drain(self) -> None:
        assert self.worker is not None
        before_batch, before_single = self.worker.taken_in_batches, self.worker.taken_one_by_one
        while self.transport.uplinks.pending():
            self.worker.drain_uplinks()
        self.outcome.reports_in_batches += self.worker.taken_in_batches - before_batch
        self.outcome.uplinks_one_by_one += self.worker.taken_one_by_one - before_single

    # ---- the truth ---------------------------------------------------------------------------

    def _check_the_truth(self) -> None:
        """Nothing gasworks calls applied may be unapplied at the meter; the ledger must hold."""
        with self.system.new_uow() as uow:
            applied = uow.meter_commands.applied_credits_since(self.start, limit=10_000_000)
        for command in applied:
            i = int(command.account_no) - 43 * 10**8
            meter = self.meters.get(i)
            at_meter = meter.applied_seq if meter is not None else int(self.city.applied_seq[i])
            self.outcome.purchases_proven_applied += 1
            if (command.purchase_seq or 0) > at_meter:
                self.outcome.truth_violations.append(f"purchase #{command.purchase_seq} of meter {serial_of(i)} shown applied; the meter has applied #{at_meter}")
        self.outcome.purchases_applied_at_meters = sum(len(m.applied) for m in self.meters.values())
        self.outcome.litres_applied_at_meters = sum(m.total_purchased_litres for m in self.meters.values())
        self.outcome.ledger = check_ledger(self.system.new_uow())

    def close(self) -> None:
        self._pool.shutdown()
        if self.worker is not None:
            self.worker.close()
