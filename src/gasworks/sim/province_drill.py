"""The city-shard drill: a province of cities, each on a PostgreSQL server of its own, one real
`gasworks province serve` in front, signed wallet payments to every city at a steady rate, and one
city's database server killed as a dead machine would be (SIGKILL to the postmaster and its
children), brought back later, and then the count.

It proves what a province relies on: while one city is down, the other cities' payments are
answered as before (none refused, latency measured before and during); the dead city's channels
hear 503 and retry; after the restart every payment acknowledged in every city is booked, once;
`gasworks province check` passes.
"""

import json
import os
import signal
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
from gasworks.domain.province import nearest_rank
from gasworks.services import accounts, channels
from gasworks.sim.chaos import Api
from gasworks.sim.soak_rig import GASWORKS_COMMAND, GasworksProcess, PrivatePostgres, count_booked, free_port, gasworks_env, new_run_directory

DRILL_SECRET = "province-drill-secret-0123456789abcdef"
CITY_NAMES = {"4101": "郑州", "4103": "洛阳", "4105": "安阳", "4107": "新乡", "4113": "南阳"}
TOP_UP_FEN = 5_000
# A channel backs off between attempts of one payment (WeChat Pay: 15 s, 15 s, 30 s, 3 min …); the
# drill's wallet is keener, from half a second doubling to eight, so a city's return is seen quickly.
RETRY_PAUSE_S_FIRST = 0.5
RETRY_PAUSE_S_MAX = 8.0
ANSWER_WAIT_S_MAX = 120.0


@dataclass(frozen=True)
class ProvinceDrillOptions:
    cities: int = 3
    kill: str = "4103"
    payments_per_s_per_city: int = 10
    households_per_city: int = 20
    before_kill_s: float = 10.0
    down_s: float = 20.0
    after_restart_s: float = 15.0


@dataclass
class CityCount:
    code: str
    sent: int = 0
    acknowledged: int = 0
    booked: int = 0
    lost: int = 0  # acknowledged, not booked
    doubled: int = 0  # booked more than once
    unanswered: int = 0
    refused_while_down: Counter[str] = field(default_factory=Counter)  # attempts, by status
    answered_ms_before: list[int] = field(default_factory=list)  # first attempts answered 200, before the kill
    answered_ms_while_down: list[int] = field(default_factory=list)  # ... while the killed city was down

    def p(self, values: list[int], percent: int) -> str:
        found = nearest_rank(sorted(values), percent)
        return "—" if found is None else f"{found} ms"


@dataclass
class ProvinceDrillReport:
    cities: dict[str, CityCount] = field(default_factory=dict)
    killed: str = ""
    back_after_restart_s: float | None = None  # server started again (crash recovery and all) → first booking in the killed city
    without_service_s: float | None = None  # the kill → first booking in the killed city after it
    check_exit: int | None = None
    wall_s: float = 0.0

    @property
    def others_refused_while_down(self) -> int:
        return sum(sum(c.refused_while_down.values()) for code, c in self.cities.items() if code != self.killed)

    @property
    def ok(self) -> bool:
        every = self.cities.values()
        return all(c.lost == 0 and c.doubled == 0 and c.unanswered == 0 and c.acknowledged == c.sent == c.booked for c in every) and self.others_refused_while_down == 0 and self.check_exit == 0


class ProvinceDrill:
    def __init__(self, options: ProvinceDrillOptions, *, say=lambda _line: None) -> None:  # noqa: ANN001
        codes = list(CITY_NAMES)[: options.cities]
        if options.kill not in codes:
            raise ValueError(f"--kill is one of the drill's cities: {', '.join(codes)}")
        self.options = options
        self.codes = codes
        self.say = say
        self.run_id = datetime.now(UTC).strftime("%H%M%S")
        self.report = ProvinceDrillReport(cities={code: CityCount(code) for code in codes}, killed=options.kill)
        self.lock = threading.Lock()
        self.acked: dict[tuple[str, str], str] = {}  # (city, txn id) → payment id
        self.down_from: float | None = None
        self.down_until: float | None = None
        self.restarted_at: float | None = None
        self.first_booked_after_restart: float | None = None

    def run(self) -> ProvinceDrillReport:
        started = time.monotonic()
        directory = new_run_directory()
        servers = {code: PrivatePostgres(directory / f"pg-{code}") for code in self.codes}
        serve: GasworksProcess | None = None
        try:
            for code, server in servers.items():
                server.start()
                server.create_database()
                self.say(f"city {code} {CITY_NAMES[code]}: PostgreSQL on port {server.port}")
            province_file = self._province_file(directory, servers)
            port = free_port()
            serve = GasworksProcess("gasworks province serve", ["province", "serve", "--port", str(port)], gasworks_env(province_file=str(province_file), log_json="true"), directory / "serve.log")
            serve.ready_port = port
            serve.start()
            serve.wait_ready()
            households = {code: self._set_up(code, servers[code].url) for code in self.codes}
            self._load(Api(f"http://127.0.0.1:{port}"), households, servers[self.options.kill])
            self._count(households, servers)
            self.report.check_exit = subprocess.run(  # noqa: S603 - our own CLI
                [*GASWORKS_COMMAND, "province", "check", "--province", str(province_file)], env=gasworks_env(), capture_output=True, check=False
            ).returncode
        finally:
            if serve is not None:
                serve.stop()
            for server in servers.values():
                server.stop()
        self.report.wall_s = time.monotonic() - started
        self.say(f"logs in {directory}")
        return self.report

    def _province_file(self, directory: Path, servers: dict[str, PrivatePostgres]) -> Path:
        path = directory / "province.toml"
        path.write_text("".join(f'[[cities]]\ncode = "{code}"\nname = "{CITY_NAMES[code]}"\ndatabase_url = "{servers[code].url}"\nchannels = ["wallet-{code}"]\n\n' for code in self.codes))
        return path

    def _set_up(self, code: str, url: str) -> list[str]:
        system = bootstrap(Settings(database_url=url))
        channels.add_channel(channel_id=f"wallet-{code}", kind=ChannelKind.WALLET_HMAC, name=f"钱包 {CITY_NAMES[code]}", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, f"w-{code}", DRILL_SECRET)], uow=system.new_uow(), actor="drill")
        numbers = []
        for i in range(self.options.households_per_city):
            account_no = f"{code}{i:08d}"
            accounts.open_account(accounts.OpenAccount(account_no, f"住户{i}", f"演练苑 {i} 号", "演练苑", "G-01", "13800000000", f"{code}{i:010d}", MeterKind.IOT), system.new_uow(), actor="drill")
            numbers.append(account_no)
        system.engine.dispose()
        return numbers

    def _load(self, api: Api, households: dict[str, list[str]], killed_server: PrivatePostgres) -> None:
        o = self.options
        load_s = o.before_kill_s + o.down_s + o.after_restart_s
        load_ends = time.monotonic() + load_s
        answer_deadline = load_ends + ANSWER_WAIT_S_MAX
        wallets = {code: WalletClient(key_id=f"w-{code}", secret=DRILL_SECRET) for code in self.codes}

        def pay(code: str, txn_id: str, account_no: str) -> None:
            count = self.report.cities[code]
            path = f"/v1/channels/wallet-{code}/payments"
            first = True
            pause_s = RETRY_PAUSE_S_FIRST
            while time.monotonic() < answer_deadline:
                sent_at = time.monotonic()
                headers, body = wallets[code].payment(path=path, txn_id=txn_id, account_no=account_no, amount_fen=TOP_UP_FEN, at=datetime.now(UTC))
                status, reply = api.once("POST", path, headers=headers, body=body)
                answered_ms = int((time.monotonic() - sent_at) * 1000)
                with self.lock:
                    down = self.down_from is not None and sent_at >= self.down_from and (self.down_until is None or sent_at < self.down_until)
                    if status != 200 and down:
                        count.refused_while_down["no answer" if status is None else str(status)] += 1
                    if status == 200:
                        self.acked[(code, txn_id)] = json.loads(reply)["payment_id"]
                        if first:
                            (count.answered_ms_while_down if down else count.answered_ms_before if self.down_from is None else []).append(answered_ms)
                        if code == o.kill and self.restarted_at is not None and self.first_booked_after_restart is None:
                            self.first_booked_after_restart = time.monotonic()
                        return
                if status is not None and status < 500:
                    return  # refused for good: counted as not acknowledged
                first = False
                time.sleep(pause_s)
                pause_s = min(RETRY_PAUSE_S_MAX, pause_s * 2)
            with self.lock:
                count.unanswered += 1

        killer = threading.Thread(target=self._kill_and_restart, args=(killed_server,), daemon=True)
        killer.start()
        self.say(f"{o.payments_per_s_per_city} payments/s to each of {len(self.codes)} cities for {load_s:.0f} s; {o.kill}'s database dies at {o.before_kill_s:.0f} s for {o.down_s:.0f} s")
        threads: list[threading.Thread] = []
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < load_ends:
            for code in self.codes:
                numbers = households[code]
                thread = threading.Thread(target=pay, args=(code, f"P{self.run_id}{n:06d}", numbers[n % len(numbers)]), daemon=True)
                thread.start()
                threads.append(thread)
                self.report.cities[code].sent += 1
            n += 1
            next_at += 1 / o.payments_per_s_per_city
            time.sleep(max(0.0, next_at - time.monotonic()))
        self.say(f"load stopped after {n:,} payments per city; waiting for every one to be answered")
        for thread in threads:
            thread.join()
        killer.join()

    def _kill_and_restart(self, server: PrivatePostgres) -> None:
        time.sleep(self.options.before_kill_s)
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False).stdout.split()
        with self.lock:
            self.down_from = time.monotonic()
        for pid in [postmaster, *map(int, children)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.say(f"city {self.options.kill}'s PostgreSQL killed (postmaster {postmaster} and {len(children)} children)")
        time.sleep(self.options.down_s)
        (server.data / "postmaster.pid").unlink(missing_ok=True)  # a dead machine's lock file, as after a power cut
        with self.lock:
            self.restarted_at = time.monotonic()
        server.start()  # crash recovery, then ready
        with self.lock:
            self.down_until = time.monotonic()
        self.say(f"city {self.options.kill}'s PostgreSQL back (crash recovery done)")

    def _count(self, households: dict[str, list[str]], servers: dict[str, PrivatePostgres]) -> None:
        r = self.report
        if self.restarted_at is not None and self.first_booked_after_restart is not None and self.down_from is not None:
            r.back_after_restart_s = self.first_booked_after_restart - self.restarted_at
            r.without_service_s = self.first_booked_after_restart - self.down_from
        for code in self.codes:
            count = r.cities[code]
            acked = {txn: pid for (city, txn), pid in self.acked.items() if city == code}
            count.acknowledged = len(acked)
            booked = count_booked(servers[code].url, f"wallet-{code}")
            count.booked, count.doubled, count.lost = booked.booked, len(booked.twice), len(booked.lost(acked))
