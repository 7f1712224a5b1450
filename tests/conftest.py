"""Fixtures: every service test runs on the embedded SQLite default and on real PostgreSQL.

PostgreSQL tests use GASWORKS_TEST_POSTGRES_URL (default: the local server, database `test`) to
create a fresh database for the session. Without a server they skip with the reason, unless
GASWORKS_REQUIRE_SERVICES=1 (CI), where a missing service fails the run.
"""

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Table, create_engine, insert, select, text
from sqlalchemy.engine import make_url

from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.adapters.db.tables import ledger_accounts, metadata, tariffs
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.clock import FixedClock
from gasworks.domain.ledger import FIXED_ACCOUNTS
from tests.fakes import FakeSystem

POSTGRES_ADMIN_URL = os.environ.get("GASWORKS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MQTT_URL = os.environ.get("GASWORKS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
REQUIRE_SERVICES = os.environ.get("GASWORKS_REQUIRE_SERVICES") == "1"
START = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)


def service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"GASWORKS_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The machine's MQTT broker (GASWORKS_TEST_MQTT_URL, default mqtt://127.0.0.1:1883)."""
    parsed = urlsplit(MQTT_URL)
    if not reachable(parsed.hostname or "127.0.0.1", parsed.port or 1883):
        service_missing(f"MQTT broker not reachable at {MQTT_URL}")
    return MQTT_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped at the end."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except Exception as error:  # noqa: BLE001 - any connection failure means "no server here"
        admin.dispose()
        service_missing(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(error).__name__}")
    name = f"gasworks_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as c:  # the migration's seeded tariffs, put back after each TRUNCATE
        c.execute(text("CREATE TABLE seeded_tariffs AS SELECT * FROM tariffs"))
        c.execute(text("CREATE TABLE seeded_meter_models AS SELECT * FROM meter_models"))
    engine.dispose()
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gasworks.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def _empty_postgres(url: str):  # noqa: ANN202
    engine = make_engine(url)
    seeded_tariffs = Table("seeded_tariffs", metadata.__class__(), autoload_with=engine)
    names = ", ".join(t.name for t in metadata.sorted_tables)
    with engine.begin() as c:
        # TRUNCATE skips the append-only row triggers: fine between tests, never in the product.
        c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        c.execute(insert(ledger_accounts), [{"code": code, "kind": code, "entries_sum_fen": 0} for code in FIXED_ACCOUNTS])
        columns = [name for name in seeded_tariffs.c.keys() if name != "id"]  # ids come from the restarted sequence
        c.execute(insert(tariffs).from_select(columns, select(*(seeded_tariffs.c[name] for name in columns))))
        c.execute(text("INSERT INTO meter_models SELECT * FROM seeded_meter_models"))  # the built-in meter model profiles
    return engine


def sqlite_copy(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite database at head, copied from the session's migrated template."""
    path = tmp_path / "gasworks.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_copy(request, tmp_path)
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url).dispose()
    return url


@pytest.fixture
def postgres_only_url(postgres_url: str) -> str:
    _empty_postgres(postgres_url).dispose()
    return postgres_url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


def make_system(url: str, clock: FixedClock) -> System:
    return bootstrap(Settings(database_url=url), clock=clock)


@pytest.fixture
def system(database_url: str, clock: FixedClock) -> Iterator[System]:
    sys_ = make_system(database_url, clock)
    yield sys_
    sys_.engine.dispose()


@pytest.fixture(params=["fake", "sqlite", "postgres"])
def any_system(request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock) -> Iterator["System | FakeSystem"]:
    """The in-memory fakes (tests/fakes.py) and both databases, empty: a service test's assertions run on each."""
    if request.param == "fake":
        yield FakeSystem(clock)
        return
    sys_ = make_system(sqlite_copy(request, tmp_path) if request.param == "sqlite" else request.getfixturevalue("postgres_only_url"), clock)
    yield sys_
    sys_.engine.dispose()
