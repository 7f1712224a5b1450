"""The chaos soak: real gasworks processes under honest traffic, faults and forgeries, proving the
invariants after every fault and at the end.

A run is a plan made from the seed before anything starts: rounds of `ROUND_S` seconds, each with
one process fault (sigkill the API or a worker, restart the broker or PostgreSQL), its honest
payments (each with a notification fate: on time, lost then resent, duplicated, delayed) and its
forgeries. So the same seed gives the same counts, whatever the machine's speed; only the frame
faults (every n-th frame) depend on how many frames flowed. After each fault the soak waits for the
system to answer again and checks every invariant on one consistent snapshot; at the end it stops
the chaos, lets deliveries finish, checks again and runs `gasworks check` itself.
"""

import heapq
import json
import random
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from gasworks.adapters.channels.alipay import AlipayNotifier
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.channels.wechatpay_v3 import WechatPayV3Notifier
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.delivery import AlertKind, CommandState
from gasworks.domain.meter_messages import CurrentData
from gasworks.services import access, accounts, channels, meter_keys
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from gasworks.services.delivery import resolve_alert
from gasworks.services.unit_of_work import UnitOfWork
from gasworks.sim.chaos import (
    FORGED_CLAIM_SEQ_MIN,
    FORGERIES,
    NOTIFICATION_FATE_WEIGHTS,
    NOTIFICATION_FATES,
    PROCESS_FAULTS,
    WALLET_PATH,
    Api,
    Books,
    ChannelKeys,
    ChaoticFleet,
    Forged,
    FrameChaos,
    Sent,
)
from gasworks.sim.meter import SimulatedMeter
from gasworks.sim.soak_rig import (
    GASWORKS_COMMAND,
    SNAPSHOT_ROWS_MAX,
    GasworksProcess,
    PrivateBroker,
    PrivatePostgres,
    free_port,
    gasworks_env,
    new_run_directory,
)
from gasworks.sim.world import ALIPAY_APP_ID, APIV3_KEY, WALLET_SECRET, WECHAT_MCHID

ROUND_S = 10.0
WORKERS = 2
METER_REPORT_EVERY_S = 3.0
FORGERY_RECORD_WAIT_S = 20.0
DRAIN_WAIT_S = 30.0
TOP_UPS_FEN = (3_000, 5_000, 10_000, 20_000)
HONEST_CHANNELS = ("wo-wallet", "wechat", "alipay", "kiosk")
PREFIX = "soak/meters"

INVARIANTS = (
    "gasworks check passes",
    "0 fen lost",
    "0 fen doubled",
    "0 purchases applied without an issued serial",
    "nothing shown applied that the meter has not applied",
    "every forgery refused",
    "every forgery recorded (injected = rejections)",
    "every honest payment booked once",
)


@dataclass(frozen=True)
class SoakOptions:
    minutes: int = 1
    seed: int = 1
    households: int = 24
    payments_per_minute: int = 90
    forgeries_per_minute: int = 28
    keep: bool = False  # keep the run directory (databases, logs) afterwards


@dataclass(frozen=True)
class PlannedPayment:
    at_s: float  # after the round's start
    channel_id: str
    txn_id: str
    account_no: str
    amount_fen: int
    fate: str


@dataclass(frozen=True)
class Round:
    fault: str
    fault_at_s: float  # after the round's start
    payments: list[PlannedPayment]
    forgeries: list[str]


def make_plan(options: SoakOptions) -> list[Round]:
    """Every choice of the run, from the seed alone."""
    rng = random.Random(options.seed)
    n_rounds = max(1, round(options.minutes * 60 / ROUND_S))
    fault_names = list(PROCESS_FAULTS)
    forgery_names = [k.name for k in FORGERIES.values() if k.available]
    rng.shuffle(fault_names)
    rng.shuffle(forgery_names)
    payments_total = options.payments_per_minute * options.minutes
    forgeries_total = options.forgeries_per_minute * options.minutes
    rounds = []
    txn = 0
    for r in range(n_rounds):
        payments = []
        for _ in range(payments_total * (r + 1) // n_rounds - payments_total * r // n_rounds):
            txn += 1
            channel = rng.choice(HONEST_CHANNELS)
            fate = rng.choices(NOTIFICATION_FATES, NOTIFICATION_FATE_WEIGHTS)[0]
            account = f"43{rng.randrange(options.households):08d}"
            payments.append(PlannedPayment(rng.uniform(0, ROUND_S * 0.8), channel, f"SK{options.seed:04d}{txn:07d}", account, rng.choice(TOP_UPS_FEN), fate))
        first, last = forgeries_total * r // n_rounds, forgeries_total * (r + 1) // n_rounds
        rounds.append(Round(fault_names[r % len(fault_names)], rng.uniform(0.1, 0.5) * ROUND_S, payments, [forgery_names[i % len(forgery_names)] for i in range(first, last)]))
    return rounds


@dataclass
class KindCount:
    injected: int = 0
    refused: int = 0
    recorded: int = 0  # forgeries with at least one rejection record
    rows: int = 0  # rejection records they left (one per worker that heard a forged frame)


@dataclass
class SoakReport:
    options: SoakOptions
    faults: Counter
    forgeries: dict[str, KindCount]
    invariants: dict[str, list[int]]  # name -> [held, checked]
    findings: list[str]
    honest_sent: int = 0
    honest_booked: int = 0
    honest_fen: int = 0
    booked_fen: int = 0
    purchases_issued: int = 0
    purchases_applied: int = 0
    checks_run: int = 0
    gasworks_check_exit: int | None = None
    run_directory: str = ""
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and self.gasworks_check_exit == 0 and all(h == n for h, n in self.invariants.values())


@dataclass(frozen=True)
class BookedPayment:
    payment_id: str
    amount_fen: int
    state: str


@dataclass(frozen=True)
class IssuedPurchase:
    volume_litres: int
    state: str


@dataclass
class Snapshot:
    """What the soak knows, what gasworks' database says and what the meters hold, at one moment."""

    sent: dict[tuple[str, str], int]  # honest (channel, txn id) -> fen
    answered: dict[tuple[str, str], str]  # -> the payment id in the answer ("(notified)": WeChat and Alipay give none)
    honest_refused: list[str]
    forged: list[Forged]
    ledger_findings: list[str]
    payments: dict[tuple[str, str], BookedPayment]
    orders: dict[tuple[str, int], IssuedPurchase]  # (meter serial, purchase serial)
    rejections: list[dict]
    applied_before: dict[str, list[tuple[int, int]]]  # meter serial -> (purchase serial, litres) applied
    applied_after: dict[str, list[tuple[int, int]]]
    final: bool = False


def _refused(f: Forged, rejections: list[dict]) -> bool:
    """Refused by its answer (HTTP), or over MQTT, where there is none, by its rejection record."""
    return f.refused if f.refused is not None else f.recorded_in(rejections)


def judge(s: Snapshot) -> dict[str, list[str]]:
    """Each invariant and what breaks it (empty: it holds)."""
    booked = {k: p for k, p in s.payments.items() if p.state == "booked"}
    at_meters = {(serial, seq) for serial, done in s.applied_after.items() for seq, _ in done}
    found = {name: [] for name in INVARIANTS}
    found["gasworks check passes"] = list(s.ledger_findings)
    found["0 fen lost"] = [f"{k} answered, {s.sent[k]} fen, not booked for it" for k in s.answered if k not in booked or booked[k].amount_fen != s.sent[k]]
    found["0 fen doubled"] = [f"{k}: {p.amount_fen} fen taken that nobody paid" for k, p in s.payments.items() if k not in s.sent] + [
        f"{k}: booked as {p.payment_id}, the channel was told {s.answered[k]}" for k, p in s.payments.items() if s.answered.get(k, "(notified)") not in ("(notified)", p.payment_id)
    ]
    found["0 purchases applied without an issued serial"] = [
        f"meter {serial} applied #{seq} ({litres} L)" for serial, done in s.applied_before.items() for seq, litres in done
        if (serial, seq) not in s.orders or s.orders[(serial, seq)].volume_litres != litres
    ]  # fmt: skip
    found["nothing shown applied that the meter has not applied"] = [f"meter {serial} #{seq} shown applied" for (serial, seq), o in s.orders.items() if o.state == "applied" and (serial, seq) not in at_meters]
    found["every forgery refused"] = [f"{f.kind} was not refused" for f in s.forged if not _refused(f, s.rejections)]
    found["every forgery recorded (injected = rejections)"] = [f"{f.kind} left no rejection record" for f in s.forged if FORGERIES[f.kind].recorded_today and not f.recorded_in(s.rejections)]
    unbooked = list(s.honest_refused)
    if s.final:
        unbooked += [f"{k} sent, never answered" for k in s.sent if k not in s.answered]
        unbooked += [f"{k} sent, not booked" for k in s.sent if k not in booked]
    found["every honest payment booked once"] = unbooked
    return found


def install_meter_key(meter: SimulatedMeter, system: System) -> None:
    """The installer writes the key gasworks made at registration into the meter."""
    meter.install_key(meter_keys.export_key(meter.serial, system.new_uow(), actor="soak"))


class Soak:
    def __init__(self, options: SoakOptions, *, say: Callable[[str], None] = lambda _: None) -> None:
        self.options = options
        self.say = say
        self.plan = make_plan(options)
        self.rng = random.Random(options.seed * 7919 + 5)
        self.books = Books()
        self.findings: list[str] = []
        self.invariants: dict[str, list[int]] = {name: [0, 0] for name in (*INVARIANTS, "every gasworks process running")}
        self._ids = iter(range(1, 10**9))
        self._ids_lock = threading.Lock()
        self.stop = threading.Event()
        self.fleet: ChaoticFleet | None = None
        self.processes: list[GasworksProcess] = []
        self.checks_run = 0
        self._orders: dict[str, str] = {}  # txn id -> the resident's order for it
        self._orders_lock = threading.Lock()

    # ---- the run -------------------------------------------------------------------------------------

    def run(self) -> SoakReport:
        started = time.monotonic()
        self.directory = new_run_directory()
        try:
            self._start_services()
            self._run_rounds()
            self._drain()
            self._check("the end", final=True)
            for p in self.processes:  # their work is done: they stop while the check runs
                p.terminate()
            self.say("running `gasworks check`")
            self.gasworks_check_exit = self._gasworks_check()
        finally:
            self._tear_down()
        report = self._report()
        report.wall_s = time.monotonic() - started
        if not self.options.keep and report.ok:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            report.run_directory = str(self.directory)
        return report

    def next_id(self) -> str:
        with self._ids_lock:
            return f"{next(self._ids):07d}"

    def _start_services(self) -> None:
        self.say("starting a private PostgreSQL and an authenticated Mosquitto")
        self.postgres = PrivatePostgres(self.directory / "postgres")
        self.postgres.start()
        self.postgres.create_database()
        self.serials = [f"{31_000_000_000_000 + i:014d}" for i in range(self.options.households)]
        self.broker = PrivateBroker(self.directory / "mosquitto", PREFIX, self.serials)
        self.broker.start()
        self.system = bootstrap(Settings(database_url=self.postgres.url))
        self.system.migrate()
        audit_engine = self.system.engine.execution_options(isolation_level="REPEATABLE READ")  # one snapshot per check
        self.audit = bootstrap(Settings(database_url=self.postgres.url), engine=audit_engine)
        self.keys = self._set_up_city()
        self.api_port = free_port()
        common = {
            "database_url": self.postgres.url, "mqtt_url": self.broker.url(self.broker.access.gasworks), "mqtt_topic_prefix": PREFIX,
            "meter_ack_wait_s": "1", "meter_ack_wait_s_max": "2", "watchdog_interval_s": "5", "log_json": "true",
            "orders_per_account_max": "1000000",  # the soak's residents order far more often than real ones
        }  # fmt: skip
        self.serve = GasworksProcess("gasworks serve", ["serve", "--no-worker", "--port", str(self.api_port)], gasworks_env(**common), self.directory / "serve.log")
        self.serve.ready_port = self.api_port
        self.workers = [GasworksProcess(f"gasworks worker {i}", ["worker"], gasworks_env(**common, mqtt_client_id=f"soak-worker-{i}", worker_metrics_port=str(free_port())), self.directory / f"worker-{i}.log") for i in range(1, WORKERS + 1)]
        self.processes = [self.serve, *self.workers]
        self.say(f"starting gasworks serve and {WORKERS} gasworks workers")
        for p in self.processes:
            p.start()
        self.serve.wait_ready()
        self.say("gasworks serve answers; meters connecting")
        self.api = Api(f"http://127.0.0.1:{self.api_port}", stop=self.stop)
        meters = [SimulatedMeter(serial, credit_litres=5_000) for serial in self.serials]
        for meter in meters:
            install_meter_key(meter, self.system)
        self.fleet = ChaoticFleet(self.broker.url(self.broker.access.meters), prefix=PREFIX, meters=meters, chaos=FrameChaos(), rng=random.Random(self.options.seed))
        self.fleet.start()
        threading.Thread(target=self._meters_report, name="soak-meters", daemon=True).start()

    def _set_up_city(self) -> ChannelKeys:
        new_uow, actor = self.system.new_uow, "soak"
        wechat_key, alipay_key = new_private_key_pem(), new_private_key_pem()
        channels.add_channel(
            channel_id="wechat", kind=ChannelKind.WECHATPAY_V3, name="微信支付", merchant_id=WECHAT_MCHID,
            keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "PUB_KEY_ID_SOAK", public_key_pem(wechat_key)), (KeyPurpose.APIV3_KEY, "apiv3-soak", APIV3_KEY)], uow=new_uow(), actor=actor,
        )  # fmt: skip
        channels.add_channel(
            channel_id="alipay", kind=ChannelKind.ALIPAY, name="支付宝", merchant_id=ALIPAY_APP_ID,
            keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "alipay-soak", public_key_pem(alipay_key))], uow=new_uow(), actor=actor,
        )  # fmt: skip
        channels.add_channel(channel_id="wo-wallet", kind=ChannelKind.WALLET_HMAC, name="沃钱包", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "wo-soak", WALLET_SECRET)], uow=new_uow(), actor=actor)
        channels.add_channel(channel_id="kiosk", kind=ChannelKind.KIOSK, name="自助机", merchant_id="", keys=[], uow=new_uow(), actor=actor)
        _, device_key = access.create_api_key(name="soak-kiosk", role=Role.DEVICE, channel_id="kiosk", uow=new_uow(), actor=actor)
        for i in range(self.options.households):
            accounts.open_account(
                accounts.OpenAccount(f"43{i:08d}", f"住户{i}", f"浸泡苑 {i} 号", "浸泡苑", "G-01", "13800000000", self.serials[i], MeterKind.IOT),
                new_uow(), actor=actor,
            )  # fmt: skip
        return ChannelKeys(
            wechat=WechatPayV3Notifier(platform_private_key_pem=wechat_key, serial="PUB_KEY_ID_SOAK", apiv3_key=APIV3_KEY, mchid=WECHAT_MCHID),
            alipay=AlipayNotifier(alipay_private_key_pem=alipay_key, app_id=ALIPAY_APP_ID),
            wallet=WalletClient(key_id="wo-soak", secret=WALLET_SECRET),
            device_key=device_key,
        )

    def _meters_report(self) -> None:
        """Every meter wakes and reports every few seconds, staggered; it listens in between."""
        assert self.fleet is not None
        step_s = METER_REPORT_EVERY_S / max(1, len(self.serials))
        while not self.stop.is_set():
            for serial in self.serials:
                if self.stop.wait(step_s):
                    return
                self.fleet.report(serial)

    def _run_rounds(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="soak-pay")
        self.sends: list = []
        schedule: list[tuple[float, int, Callable[[], None]]] = []
        begin = time.monotonic()
        for r, plan in enumerate(self.plan):
            round_start = begin + r * ROUND_S
            for p in plan.payments:
                self._schedule_payment(schedule, round_start, p)
        threading.Thread(target=self._dispatch, args=(schedule,), name="soak-dispatch", daemon=True).start()
        for r, plan in enumerate(self.plan):
            round_start = begin + r * ROUND_S
            time.sleep(max(0.0, round_start + plan.fault_at_s - time.monotonic()))
            what = PROCESS_FAULTS[plan.fault].inject(self, self.rng)
            self.books.faults[plan.fault] += 1
            self.say(f"round {r + 1}/{len(self.plan)}: {what}")
            self._check(f"after {plan.fault}")
            self._forge(plan.forgeries)
        time.sleep(max(0.0, begin + len(self.plan) * ROUND_S - time.monotonic()))

    def _schedule_payment(self, schedule: list, round_start: float, p: PlannedPayment) -> None:
        with self.books.lock:
            self.books.honest_sent[(p.channel_id, p.txn_id)] = p.amount_fen
        if p.fate != "on time":
            self.books.faults[f"notification {p.fate}"] += 1
        at = round_start + p.at_s
        n = len(schedule)
        if p.fate == "lost, then resent":
            heapq.heappush(schedule, (at + self.rng.uniform(2, 5), n, lambda: self._pay(p)))
        elif p.fate == "delayed (reordered)":
            heapq.heappush(schedule, (at + self.rng.uniform(1, 4), n, lambda: self._pay(p)))
        else:
            heapq.heappush(schedule, (at, n, lambda: self._pay(p)))
            if p.fate == "duplicated":
                heapq.heappush(schedule, (at + self.rng.uniform(0.05, 2), n + 10**6, lambda: self._pay(p)))

    def _dispatch(self, schedule: list) -> None:
        while schedule and not self.stop.is_set():
            at, _, action = heapq.heappop(schedule)
            time.sleep(max(0.0, at - time.monotonic()))
            self.sends.append(self.pool.submit(action))

    # ---- honest payments ---------------------------------------------------------------------------------

    def _pay(self, p: PlannedPayment) -> None:
        if p.channel_id == "wo-wallet":
            sent = self.api.until_answered(lambda: self._wallet_attempt(p.txn_id, p.account_no, p.amount_fen))
            ok = sent.status == 200
            payment_id = json.loads(sent.reply).get("payment_id") if ok else None
        elif p.channel_id == "kiosk":
            body = {"txn_id": p.txn_id, "account_no": p.account_no, "amount_fen": p.amount_fen, "method": "cash"}
            headers = {"Authorization": f"Bearer {self.keys.device_key}"}
            sent = self.api.until_answered(lambda: Sent(headers, b"", *self.api.once("POST", "/v1/devices/payments", headers=headers, json_body=body)))
            ok = sent.status == 200
            payment_id = json.loads(sent.reply).get("payment_id") if ok else None
        else:
            out_trade_no = self._order_for(p)
            if out_trade_no is None:
                sent, ok = Sent({}, b"", None, b"no order could be created"), False
            else:
                sent = self.api.until_answered(lambda: self._notify_attempt(p, out_trade_no))
                ok = sent.status == 200 and sent.reply != b"failure"
            payment_id = "(notified)"
        with self.books.lock:
            first = self.books.honest_answered.get((p.channel_id, p.txn_id))
            if ok and first is not None and first != payment_id:
                self.books.honest_refused.append(f"{p.channel_id} {p.txn_id}: a retry was answered with {payment_id}, the first with {first}")
            elif ok:
                self.books.honest_answered[(p.channel_id, p.txn_id)] = payment_id or ""
            else:
                self.books.honest_refused.append(f"{p.channel_id} {p.txn_id}: HTTP {sent.status} {sent.reply[:200]!r}")

    def _order_for(self, p: PlannedPayment) -> str | None:
        """The resident's order, created once per payment (a duplicate notification reuses it), at
        the kiosk's key (a device may create orders)."""
        with self._orders_lock:
            if p.txn_id in self._orders:
                return self._orders[p.txn_id]
        body = {"channel_id": p.channel_id, "account_no": p.account_no, "amount_fen": p.amount_fen}
        headers = {"Authorization": f"Bearer {self.keys.device_key}"}
        sent = self.api.until_answered(lambda: Sent(headers, b"", *self.api.once("POST", "/v1/orders", headers=headers, json_body=body)))
        if sent.status != 201:
            return None
        out_trade_no = json.loads(sent.reply)["out_trade_no"]
        with self._orders_lock:
            return self._orders.setdefault(p.txn_id, out_trade_no)

    def _wallet_attempt(self, txn_id: str, account_no: str, amount_fen: int) -> Sent:
        headers, body = self.keys.wallet.payment(path=WALLET_PATH, txn_id=txn_id, account_no=account_no, amount_fen=amount_fen, at=datetime.now(UTC))
        return Sent(headers, body, *self.api.once("POST", WALLET_PATH, headers=headers, body=body))

    def _notify_attempt(self, p: PlannedPayment, out_trade_no: str) -> Sent:
        now = datetime.now(UTC)
        if p.channel_id == "wechat":
            headers, body = self.keys.wechat.notification(out_trade_no=out_trade_no, transaction_id=p.txn_id, amount_fen=p.amount_fen, at=now)
        else:
            headers, body = self.keys.alipay.notification(out_trade_no=out_trade_no, trade_no=p.txn_id, amount_fen=p.amount_fen, at=now)
        return Sent(headers, body, *self.api.once("POST", f"/v1/channels/{p.channel_id}/notify", headers=headers, body=body))

    def honest_wallet_payment(self) -> Sent:
        """For forgeries that need an answered payment to replay or contradict: one more honest payment."""
        txn_id, account_no, amount_fen = f"SKF{self.options.seed:04d}{self.next_id()}", self.rng.choice(self.serials_accounts), self.rng.choice(TOP_UPS_FEN)
        with self.books.lock:
            self.books.honest_sent[("wo-wallet", txn_id)] = amount_fen
        sent = self.api.until_answered(lambda: self._wallet_attempt(txn_id, account_no, amount_fen))
        with self.books.lock:
            if sent.status == 200:
                self.books.honest_answered[("wo-wallet", txn_id)] = json.loads(sent.reply).get("payment_id", "")
            else:
                self.books.honest_refused.append(f"wo-wallet {txn_id}: HTTP {sent.status}")
        return sent

    @property
    def serials_accounts(self) -> list[str]:
        return [f"43{i:08d}" for i in range(self.options.households)]

    # ---- forgeries -------------------------------------------------------------------------------------------

    def publish_up(self, serial: str, payload: bytes) -> None:
        assert self.fleet is not None
        self.fleet.publish_up(serial, payload)

    def as_meter_sends(self, serial: str, message: Callable[[SimulatedMeter], CurrentData]) -> bytes:
        assert self.fleet is not None
        return self.fleet.as_meter_sends(serial, message)

    def old_uplink(self, age_s_min: float) -> tuple[str, bytes] | None:
        assert self.fleet is not None
        return self.fleet.old_uplink(age_s_min)

    def rejections_matching(self, matches: Callable[[dict], bool]) -> int:
        return sum(1 for r in self._rejections() if matches(r))

    def _forge(self, kinds: list[str]) -> None:
        forged = []
        for name in kinds:
            make = FORGERIES[name].make
            assert make is not None
            forged.append(make(self))
        with self.books.lock:
            self.books.forged.extend(forged)
        deadline = time.monotonic() + FORGERY_RECORD_WAIT_S
        expected = [f for f in forged if FORGERIES[f.kind].recorded_today]
        while time.monotonic() < deadline:
            rows = self._rejections()
            if all(f.recorded_in(rows) for f in expected):
                return
            time.sleep(0.2)

    def _rejections(self) -> list[dict]:
        with self.audit.new_uow() as uow:
            return _rejection_rows(uow)

    # ---- process faults (FaultTarget) ------------------------------------------------------------------------

    def kill_api(self) -> str:
        self.serve.sigkill()
        self.serve.start()
        self.serve.wait_ready()
        return "gasworks serve killed with SIGKILL and restarted"

    def kill_worker(self, rng: random.Random) -> str:
        worker = rng.choice(self.workers)
        worker.sigkill()
        worker.start()
        return f"{worker.name} killed with SIGKILL and restarted"

    def restart_broker(self) -> str:
        self.broker.stop()
        self.broker.start()
        return "mosquitto stopped and started again"

    def restart_postgres(self) -> str:
        self.postgres.crash()
        time.sleep(0.5)  # the API answers 5xx meanwhile; the channels retry
        self.postgres.start()
        self.serve.wait_ready()
        return "PostgreSQL stopped with -m immediate (a crash) and started again"

    # ---- the end --------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """No more chaos: every honest payment answered, every purchase applied at its meter."""
        self.say("chaos off: waiting for every payment to be answered and every purchase to be applied")
        assert self.fleet is not None
        self.fleet.chaos.on = False
        deadline = time.monotonic() + DRAIN_WAIT_S
        while time.monotonic() < deadline and (len(self.sends) < self._planned_sends() or not all(s.done() for s in self.sends)):
            time.sleep(0.1)
        while time.monotonic() < deadline:
            with self.audit.new_uow() as uow:
                settled = all(state == CommandState.APPLIED for _, _, _, state in uow.meter_commands.every_credit_order(SNAPSHOT_ROWS_MAX))
            if settled:
                return
            time.sleep(0.2)
        self.findings.append(f"not everything settled within {DRAIN_WAIT_S:.0f} s of the chaos ending")

    def _planned_sends(self) -> int:
        return sum(2 if p.fate == "duplicated" else 1 for r in self.plan for p in r.payments)

    def _gasworks_check(self) -> int:
        done = subprocess.run(
            [*GASWORKS_COMMAND, "check"],
            env=gasworks_env(database_url=self.postgres.url), capture_output=True, text=True, check=False,
        )  # fmt: skip
        (self.directory / "gasworks-check.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            self.findings.append(f"`gasworks check` exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
        return done.returncode

    def _tear_down(self) -> None:
        self.stop.set()
        if self.fleet is not None:
            self.fleet.stop()
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.stop()
        for service in ("broker", "postgres"):
            if hasattr(self, service):
                getattr(self, service).stop()
        if hasattr(self, "system"):
            self.system.engine.dispose()

    # ---- the invariants --------------------------------------------------------------------------------------

    def _check(self, at: str, *, final: bool = False) -> None:
        """Every invariant on one snapshot: what the soak was told is read before the database (so
        all of it must be there), what the meters hold both before and after it."""
        assert self.fleet is not None
        self.checks_run += 1
        with self.books.lock:
            sent, answered, refused, forged = dict(self.books.honest_sent), dict(self.books.honest_answered), list(self.books.honest_refused), list(self.books.forged)
        applied_before = self.fleet.applied()
        self._resolve_forged_claims()
        ledger = check_ledger(self.audit.new_uow())
        with self.audit.new_uow() as uow:  # one REPEATABLE READ transaction: one snapshot
            payments = uow.payments.every_claim(SNAPSHOT_ROWS_MAX)
            orders = uow.meter_commands.every_credit_order(SNAPSHOT_ROWS_MAX)
            rejections = _rejection_rows(uow)
        snapshot = Snapshot(
            sent=sent, answered=answered, honest_refused=refused, forged=forged, ledger_findings=[f"{f.code} {f.subject}: {f.detail}" for f in ledger.findings],
            payments={(channel_id, txn_id): BookedPayment(payment_id, amount_fen, state) for channel_id, txn_id, amount_fen, state, payment_id in payments},
            orders={(serial, seq): IssuedPurchase(litres, state) for serial, seq, litres, state in orders},
            rejections=rejections, applied_before=applied_before, applied_after=self.fleet.applied(), final=final,
        )  # fmt: skip
        found = judge(snapshot)
        found["every gasworks process running"] = [f"{p.name} exited with {p.process.returncode}; see {p.log}" for p in self.processes if p.process is not None and p.process.poll() is not None]
        for name, broken in found.items():
            self.invariants[name][1] += 1
            if broken:
                self.findings.extend(f"{at}: {name}: {b}" for b in broken[:5])
            else:
                self.invariants[name][0] += 1
        if final:
            self._final = snapshot

    def _resolve_forged_claims(self) -> None:
        """A meter claiming a purchase never issued is a finding of `gasworks check` until a person
        records what it was. The soak's operator does that for the claims it forged (purchase
        #1000 and above, far past anything issued here), and only for those: an honest meter's
        claim beyond what was issued stays a finding and breaks the invariant."""
        with self.audit.new_uow() as uow:
            open_claims = uow.alerts.open_of_kind(AlertKind.METER_CLAIMS_UNISSUED, 10_000)
        for alert in open_claims:
            claimed = re.search(r"claims purchase #(\d+)", alert.reason)
            if claimed is not None and int(claimed.group(1)) >= FORGED_CLAIM_SEQ_MIN and alert.id is not None:
                resolve_alert(alert.id, self.audit.new_uow(), actor="soak:operator", note="a claim the soak forged")

    def _report(self) -> SoakReport:
        forgeries = {name: KindCount() for name, k in FORGERIES.items()}
        faults = Counter(self.books.faults)
        if self.fleet is not None:
            faults.update(self.fleet.faults)
        report = SoakReport(self.options, faults, forgeries, self.invariants, self.findings, checks_run=self.checks_run, gasworks_check_exit=getattr(self, "gasworks_check_exit", None))
        final: Snapshot | None = getattr(self, "_final", None)
        if final is None:
            return report
        for f in final.forged:
            count = forgeries[f.kind]
            count.injected += 1
            count.refused += _refused(f, final.rejections)
            count.recorded += f.recorded_in(final.rejections)
            count.rows += sum(1 for r in final.rejections if f.matches(r)) - f.already
        booked = {k: p for k, p in final.payments.items() if p.state == "booked"}
        report.honest_sent = len(final.sent)
        report.honest_fen = sum(final.sent.values())
        report.honest_booked = sum(1 for k in final.sent if k in booked)
        report.booked_fen = sum(p.amount_fen for p in booked.values())
        report.purchases_issued = len(final.orders)
        report.purchases_applied = sum(1 for o in final.orders.values() if o.state == "applied")
        return report


def _rejection_rows(uow: UnitOfWork) -> list[dict]:
    """What the soak's invariants read of each recorded refusal."""
    return [{k: row[k] for k in ("channel_id", "code", "request_summary")} for row in uow.rejections.list(limit=SNAPSHOT_ROWS_MAX)]
