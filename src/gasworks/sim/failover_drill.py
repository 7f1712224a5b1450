"""The primary-kill drill: a real `gasworks serve` on a pg_auto_failover formation
(scripts/pg-failover), signed wallet payments at a steady rate, the primary killed as a dead machine
would be, and then the count: every payment acknowledged to the channel is booked, once.

The wallet behaves as a real channel does: an attempt answered 5xx or not answered is sent again
(re-signed, same transaction id) until it is answered. The drill measures the time without service
(from the first attempt refused after the kill to the first booked after it), the attempts refused
meanwhile and with what status, and then proves acknowledged = booked and runs `gasworks check`.
"""

import json
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.services import accounts, channels
from gasworks.sim.chaos import Api
from gasworks.sim.soak_rig import GASWORKS_COMMAND, GasworksProcess, count_booked, free_port, gasworks_env, new_run_directory

DRILL_SECRET = "failover-drill-secret-0123456789abcdef"
TOP_UP_FEN = 5_000
RETRY_PAUSE_S = 0.5  # a channel's pause between attempts of one payment, while gasworks is away
ANSWER_WAIT_S_MAX = 180.0  # after the load stops, how long unanswered payments keep being retried


@dataclass(frozen=True)
class DrillOptions:
    database_url: str  # the formation's multi-host URL (scripts/pg-failover/up prints it)
    scripts: Path  # scripts/pg-failover
    households: int = 20
    payments_per_s: int = 20
    before_kill_s: float = 10.0
    after_kill_s: float = 40.0
    restart_killed_node: bool = True


@dataclass
class DrillReport:
    payments_sent: int = 0
    acknowledged: int = 0
    booked: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, not booked
    doubled: list[str] = field(default_factory=list)  # booked more than once
    unanswered: int = 0  # never answered within ANSWER_WAIT_S_MAX after the load stopped
    killed: str = ""
    service_gap_s: float | None = None  # first refusal after the kill → first booking after it
    failover_s: float | None = None  # the kill → the first booking after it
    refused_by_status: Counter[str] = field(default_factory=Counter)  # attempts refused, by status
    gasworks_check_exit: int | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.doubled and not self.unanswered and self.gasworks_check_exit == 0 and self.acknowledged == self.payments_sent


class FailoverDrill:
    def __init__(self, options: DrillOptions, *, say=lambda _line: None) -> None:  # noqa: ANN001
        self.options = options
        self.say = say
        self.run_id = datetime.now(UTC).strftime("%H%M%S")
        self.channel_id = f"drill-{self.run_id}"
        self.report = DrillReport()
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # txn id → payment id
        self.attempts: list[tuple[float, str, int | None]] = []  # (monotonic, txn id, status)
        self.killed_at: float | None = None

    def run(self) -> DrillReport:
        started = time.monotonic()
        directory = new_run_directory()
        port = free_port()
        serve = GasworksProcess("gasworks serve", ["serve", "--no-worker", "--port", str(port)], gasworks_env(database_url=self.options.database_url, log_json="true"), directory / "serve.log")
        serve.ready_port = port
        self.say(f"starting gasworks serve on the formation ({self.options.database_url})")
        serve.start()
        try:
            serve.wait_ready()
            accounts_ = self._set_up()
            self._load(Api(f"http://127.0.0.1:{port}"), accounts_)
            self._count(accounts_)
            self.report.gasworks_check_exit = subprocess.run(  # noqa: S603 - our own CLI
                [*GASWORKS_COMMAND, "check", "--database-url", self.options.database_url], env=gasworks_env(), capture_output=True, check=False
            ).returncode
        finally:
            serve.stop()
        self.report.wall_s = time.monotonic() - started
        self.say(f"logs in {directory}")
        return self.report

    def _set_up(self) -> list[str]:
        system = bootstrap(Settings(database_url=self.options.database_url))
        channels.add_channel(channel_id=self.channel_id, kind=ChannelKind.WALLET_HMAC, name="演练钱包", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, self.channel_id, DRILL_SECRET)], uow=system.new_uow(), actor="drill")
        numbers = []
        for i in range(self.options.households):
            account_no = f"45{self.run_id}{i:04d}"
            serial = f"{45_000_000_000_000 + int(self.run_id) * 10_000 + i:014d}"
            accounts.open_account(accounts.OpenAccount(account_no, f"住户{i}", f"演练苑 {i} 号", "演练苑", "G-01", "13800000000", serial, MeterKind.IOT), system.new_uow(), actor="drill")
            numbers.append(account_no)
        system.engine.dispose()
        return numbers

    def _load(self, api: Api, account_nos: list[str]) -> None:
        wallet = WalletClient(key_id=self.channel_id, secret=DRILL_SECRET)
        path = f"/v1/channels/{self.channel_id}/payments"
        load_s = self.options.before_kill_s + self.options.after_kill_s
        load_ends = time.monotonic() + load_s
        answer_deadline = load_ends + ANSWER_WAIT_S_MAX

        def pay(txn_id: str, account_no: str) -> None:
            while time.monotonic() < answer_deadline:
                headers, body = wallet.payment(path=path, txn_id=txn_id, account_no=account_no, amount_fen=TOP_UP_FEN, at=datetime.now(UTC))
                status, reply = api.once("POST", path, headers=headers, body=body)
                with self.lock:
                    self.attempts.append((time.monotonic(), txn_id, status))
                if status == 200:
                    with self.lock:
                        self.acked[txn_id] = json.loads(reply)["payment_id"]
                    return
                if status is not None and status < 500:
                    return  # refused for good: counted as not acknowledged
                time.sleep(RETRY_PAUSE_S)
            with self.lock:
                self.report.unanswered += 1

        threads: list[threading.Thread] = []
        kill = threading.Timer(self.options.before_kill_s, self._kill)
        kill.start()
        self.say(f"{self.options.payments_per_s} payments/s for {load_s:.0f} s; the primary dies at {self.options.before_kill_s:.0f} s")
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < load_ends:
            txn_id = f"D{self.run_id}{n:06d}"
            thread = threading.Thread(target=pay, args=(txn_id, account_nos[n % len(account_nos)]), daemon=True)
            thread.start()
            threads.append(thread)
            n += 1
            next_at += 1 / self.options.payments_per_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        self.report.payments_sent = n
        self.say(f"load stopped after {n:,} payments; waiting for every one to be answered")
        for thread in threads:
            thread.join()
        kill.join()

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        done = subprocess.run([str(self.options.scripts / "kill-primary")], capture_output=True, text=True, check=False)  # noqa: S603
        self.report.killed = done.stdout.strip() or done.stderr.strip()
        self.say(f"primary killed (node, port): {self.report.killed}")
        if self.options.restart_killed_node and done.returncode == 0:
            node = self.report.killed.split()[0]
            time.sleep(5)  # as an operator would: the standby is promoted first, then the old node rejoins
            subprocess.run([str(self.options.scripts / "start-node"), node], check=False)  # noqa: S603

    def _count(self, account_nos: list[str]) -> None:
        r = self.report
        r.acknowledged = len(self.acked)
        if self.killed_at is not None:
            after = [(at, status) for at, _, status in sorted(self.attempts) if at >= self.killed_at]
            first_refused = next((at for at, status in after if status != 200), None)
            first_booked = next((at for at, status in after if status == 200 and (first_refused is None or at > first_refused)), None)
            if first_refused is not None and first_booked is not None:
                r.service_gap_s = first_booked - first_refused
            if first_booked is not None:
                r.failover_s = first_booked - self.killed_at
            for _, status in after:
                if status != 200:
                    r.refused_by_status["no answer" if status is None else str(status)] += 1
        count = count_booked(self.options.database_url, self.channel_id)
        r.booked, r.doubled, r.lost = count.booked, count.twice, count.lost(self.acked)
