"""The soak's own services and processes: a private PostgreSQL, a private authenticated Mosquitto,
`gasworks serve` and `gasworks worker` as real processes, each of which can be killed and restarted.

Nothing here touches the system PostgreSQL (5432) or Mosquitto (1883): every service gets a free
port and a directory of its own under one temporary directory, removed at the end.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gasworks.adapters.meters import broker
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.errors import GasworksError

GASWORKS_COMMAND = (sys.executable, "-c", "from gasworks.entrypoints.cli.main import app; app()")  # `gasworks`, in this interpreter
SNAPSHOT_ROWS_MAX = 1_000_000  # payments one count reads: far above a drill's or a soak's
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/14/bin")
SERVICE_START_WAIT_S = 30.0
PROCESS_STOP_WAIT_S = 10.0
POLL_S = 0.05


class SoakSetupFailed(GasworksError):
    """A service the soak needs could not be started (a binary missing, a port taken, a crash)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="SOAK_SETUP_FAILED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(condition, what: str, timeout_s: float = SERVICE_START_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SoakSetupFailed(f"{what} not ready within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def postgres_bin_dir() -> Path:
    for candidate in POSTGRES_BIN_DIRS:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise SoakSetupFailed("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")


class PrivatePostgres:
    """initdb on a free port in a directory of its own. As root (CI), the server runs as the
    `postgres` OS user, since initdb refuses root."""

    def __init__(self, directory: Path) -> None:
        self.bin = postgres_bin_dir()
        self.port = free_port()
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.as_owner: list[str] = []
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            try:
                shutil.chown(directory, "postgres", "postgres")
            except LookupError:
                raise SoakSetupFailed("running as root, initdb needs the `postgres` OS user (Debian's postgresql package makes it)") from None
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/gasworks"

    def _run(self, args: list[str]) -> None:
        done = subprocess.run([*self.as_owner, *args], capture_output=True, text=True, cwd=self.directory, check=False)
        if done.returncode != 0:
            raise SoakSetupFailed(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "-o", options, "start"])

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE gasworks")

    def crash(self) -> None:
        """Stop as a power cut would for the server's processes: no checkpoint, recovery on start."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], capture_output=True, check=False)


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str


@dataclass(frozen=True)
class BrokerAccess:
    """Who may connect to the broker: gasworks' workers (read uplinks, write downlinks) and the
    simulator's meter gateway (the reverse, for many simulated meters on one connection)."""

    gasworks: BrokerUser
    meters: BrokerUser
    config: Path


def provision_broker(directory: Path, *, prefix: str, serials: list[str], port: int) -> BrokerAccess:
    """Password file, ACL and configuration as `gasworks broker provision` writes them (per-meter
    users, a worker user, a fleet user), on the loopback, with persistence, run as this OS user."""
    provisioned = broker.provision(directory, prefix=prefix, serials=serials, port=port, bind="127.0.0.1", persistence=True)
    config = directory / "mosquitto.conf"
    with config.open("a") as f:
        f.write(f"user {getpass.getuser()}\nlog_dest file {directory}/mosquitto.log\n")
    return BrokerAccess(BrokerUser(broker.WORKER_USER, provisioned.worker_password), BrokerUser(broker.FLEET_USER, provisioned.fleet_password), config)


class PrivateBroker:
    """A closed Mosquitto (no anonymous clients, topic ACLs) with persistence, on a free port."""

    def __init__(self, directory: Path, prefix: str, serials: list[str]) -> None:
        if shutil.which("mosquitto") is None:
            raise SoakSetupFailed("mosquitto not found: apt-get install mosquitto")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access = provision_broker(directory, prefix=prefix, serials=serials, port=self.port)
        self.config = self.access.config
        self.process: subprocess.Popen | None = None

    def url(self, user: BrokerUser) -> str:
        return f"mqtt://{user.name}:{user.password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: reachable(self.port), "private mosquitto")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(PROCESS_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@dataclass
class GasworksProcess:
    """One `gasworks ...` command as a real process, with its own environment and log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    ready_port: int | None = None  # serve: answered /healthz
    _logs: list = field(default_factory=list)

    def start(self) -> None:
        handle = self.log.open("ab")
        self._logs.append(handle)
        command = [*GASWORKS_COMMAND, *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1

    def wait_ready(self) -> None:
        if self.ready_port is None:
            return

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise SoakSetupFailed(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.ready_port}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, self.name)

    def sigkill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting: several stop at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(PROCESS_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.sigkill()
        for handle in self._logs:
            handle.close()
        self._logs.clear()


def gasworks_env(**settings: str) -> dict[str, str]:
    """This process's environment without any GASWORKS_* of the caller's, plus the soak's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GASWORKS_")}
    env["GASWORKS_CONFIG"] = os.devnull  # no gasworks.toml from the working directory
    env.update({f"GASWORKS_{k.upper()}": v for k, v in settings.items()})
    return env


def new_run_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="gasworks-soak-"))
    directory.chmod(0o755)  # the postgres OS user walks through it to its own directory
    return directory


@dataclass(frozen=True)
class BookedCount:
    """A channel's payments as the database holds them, by the channel's transaction id."""

    booked: int
    twice: list[str]  # transaction ids booked more than once
    payment_of: dict[str, str]  # transaction id → payment id

    def lost(self, acknowledged: dict[str, str]) -> list[str]:
        """Transaction ids acknowledged to the channel (→ payment id) that are not booked as that payment."""
        return sorted(txn for txn, payment_id in acknowledged.items() if self.payment_of.get(txn) != payment_id)


def count_booked(database_url: str, channel_id: str) -> BookedCount:
    system = bootstrap(Settings(database_url=database_url))
    try:
        with system.new_uow() as uow:
            claims = [(txn, payment_id) for channel, txn, _, _, payment_id in uow.payments.every_claim(SNAPSHOT_ROWS_MAX) if channel == channel_id]
    finally:
        system.engine.dispose()
    times = Counter(txn for txn, _ in claims)
    return BookedCount(len(claims), sorted(txn for txn, n in times.items() if n > 1), dict(claims))
