"""A province sharded by city, from the outside: a real uvicorn server in front of real PostgreSQL
databases (one per city) and plain httpx as the client; a city's database taken away under it; the
group report and check from the CLI; meter messages through a real Mosquitto to each city's worker.
"""

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings, load_province
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.delivery import CommandState
from gasworks.domain.errors import InvalidInput
from gasworks.domain.province import City, Province, TimeToGas, UnknownCity, nearest_rank
from gasworks.entrypoints.api.province import create_province_app
from gasworks.entrypoints.cli.main import app as cli
from gasworks.services import accounts, channels, meter_keys
from gasworks.sim.meter import MqttMeter, SimulatedMeter
from tests.conftest import POSTGRES_ADMIN_URL, service_missing
from tests.support import served_in_thread

SECRET = "province-test-secret-0123456789abcdef"
CITIES = (("4101", "郑州"), ("4103", "洛阳"))
DOWN_CITY = ("4105", "安阳")  # its database is a port nothing listens on


# --- the rules, pure -----------------------------------------------------------------------------


def test_an_account_number_says_its_city_and_a_channel_belongs_to_one():
    province = Province((City("4101", "郑州", frozenset({"wallet-zz"})), City("4103", "洛阳", frozenset({"wallet-ly"}))))
    assert province.city_of_account("410300000001").name == "洛阳"
    assert province.city_of_channel("wallet-zz").code == "4101"
    with pytest.raises(UnknownCity) as unknown:
        province.city_of_account("430100000001")
    assert unknown.value.code == "UNKNOWN_CITY" and unknown.value.http_status == 404
    with pytest.raises(UnknownCity) as no_channel:
        province.city_of_channel("wallet-elsewhere")
    assert no_channel.value.code == "UNKNOWN_CHANNEL"


@pytest.mark.parametrize(
    "cities",
    [
        (City("4101", "a"), City("4101", "b")),  # a code twice
        (City("41", "a"),),  # not four digits
        (City("4101", "a", frozenset({"w"})), City("4103", "b", frozenset({"w"}))),  # one channel in two cities
        (),
    ],
)
def test_a_province_that_cannot_route_is_refused(cities):
    with pytest.raises(InvalidInput) as refused:
        Province(cities)
    assert refused.value.code == "INVALID_PROVINCE"


def test_time_to_gas_uses_values_that_occurred_and_counts_purchases_still_waiting():
    assert nearest_rank([], 50) is None
    assert nearest_rank([10, 20, 30, 40], 50) == 20 and nearest_rank([10, 20, 30, 40], 90) == 40
    figures = TimeToGas.of([30, None, 10, 20, None])
    assert (figures.purchases, figures.applied, figures.p50_s, figures.p90_s, figures.max_s) == (5, 3, 20, 30, 30)


@pytest.mark.parametrize(
    ("text_", "says"),
    [
        ("not toml [", "not TOML"),
        ('[[cities]]\ncode = "4101"\nname = "郑州"\n', "database_url"),
        ('[[cities]]\ncode = "41x1"\nname = "a"\ndatabase_url = "sqlite://"\n', "code"),
        ('[[cities]]\ncode = "4101"\nname = "a"\ndatabase_url = "sqlite://"\nchannels = ["w"]\n[[cities]]\ncode = "4103"\nname = "b"\ndatabase_url = "sqlite://"\nchannels = ["w"]\n', "both"),
    ],
)
def test_a_bad_province_file_is_refused_with_the_reason(tmp_path, text_, says):
    path = tmp_path / "province.toml"
    path.write_text(text_)
    with pytest.raises(InvalidInput) as refused:
        load_province(path)
    assert refused.value.code == "INVALID_PROVINCE" and says in refused.value.message
    result = CliRunner().invoke(cli, ["province", "check", "--province", str(path)])
    assert result.exit_code == 2 and "INVALID_PROVINCE" in result.output


# --- a province on real databases, served by a real server ---------------------------------------


def _admin():  # noqa: ANN202
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except Exception as error:  # noqa: BLE001 - no server here
        admin.dispose()
        service_missing(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(error).__name__}")
    return admin


@pytest.fixture
def city_databases() -> Iterator[dict[str, str]]:
    """A fresh database per city, migrated, each with a wallet channel and two households."""
    admin = _admin()
    urls: dict[str, str] = {}
    for code, _ in CITIES:
        name = f"gasworks_city_{code}_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        urls[code] = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        engine = make_engine(urls[code])
        upgrade(engine)
        engine.dispose()
        system = bootstrap(Settings(database_url=urls[code]))
        channels.add_channel(channel_id=f"wallet-{code}", kind=ChannelKind.WALLET_HMAC, name=f"钱包 {code}", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, f"w-{code}", SECRET)], uow=system.new_uow(), actor="test")
        for i in (1, 2):
            accounts.open_account(accounts.OpenAccount(f"{code}0000000{i}", f"住户{i}", "1 栋", "华新苑", "G-01", "13800000000", f"{code}00000000{i:02d}", MeterKind.IOT), system.new_uow(), actor="test")
        system.engine.dispose()
    yield urls
    with admin.connect() as c:
        for url in urls.values():
            c.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _province_file(tmp_path: Path, urls: dict[str, str], *, down_city: bool = True, prefix: str = "") -> Path:
    lines = []
    for code, name in CITIES:
        lines += ["[[cities]]", f'code = "{code}"', f'name = "{name}"', f'database_url = "{urls[code]}"', f'channels = ["wallet-{code}"]']
        if prefix:
            lines.append(f'mqtt_topic_prefix = "{prefix}/{code}/meters"')
    if down_city:
        lines += ["[[cities]]", f'code = "{DOWN_CITY[0]}"', f'name = "{DOWN_CITY[1]}"', 'database_url = "postgresql://postgres@127.0.0.1:1/gasworks"', f'channels = ["wallet-{DOWN_CITY[0]}"]']
    path = tmp_path / "province.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def province(tmp_path, city_databases) -> Iterator[tuple[str, dict[str, str], Path]]:
    path = _province_file(tmp_path, city_databases)
    router = create_province_app(load_province(path), Settings(database_connect_timeout_s=2))
    with served_in_thread(router) as base_url:  # type: ignore[arg-type]
        yield base_url, city_databases, path
    for system in router.systems.values():
        system.engine.dispose()


def _pay(base_url: str, code: str, txn_id: str, account_no: str, fen: int, *, prefixed: bool = False) -> httpx.Response:
    path = f"/cities/{code}/v1/channels/wallet-{code}/payments" if prefixed else f"/v1/channels/wallet-{code}/payments"
    headers, body = WalletClient(key_id=f"w-{code}", secret=SECRET).payment(path=path, txn_id=txn_id, account_no=account_no, amount_fen=fen, at=datetime.now(UTC))
    return httpx.post(base_url + path, headers=headers, content=body, timeout=10)


def _booked(url: str) -> dict[str, tuple[int, int]]:
    system = bootstrap(Settings(database_url=url))
    with system.new_uow() as uow:
        totals = uow.payments.totals_by_state()
    system.engine.dispose()
    return totals


def test_each_payment_is_booked_in_its_own_city_only(province):
    base_url, urls, _ = province
    assert _pay(base_url, "4101", "T-1", "410100000001", 5_000).status_code == 200
    signed_for_prefix = _pay(base_url, "4103", "T-1", "410300000001", 7_000, prefixed=True)  # the same txn id, another city's channel
    assert signed_for_prefix.status_code == 200, signed_for_prefix.text
    assert _pay(base_url, "4101", "T-1", "410100000001", 5_000).json()["duplicate"] is True  # the channel's retry: once
    assert _booked(urls["4101"]) == {"booked": (1, 5_000)}
    assert _booked(urls["4103"]) == {"booked": (1, 7_000)}
    page = httpx.get(f"{base_url}/v1/accounts/410300000001", timeout=10)
    assert page.status_code == 401  # the city's own API answered: an operator's key is needed there


def test_a_city_whose_database_is_down_answers_503_and_the_others_carry_on(province):
    base_url, urls, _ = province
    down = _pay(base_url, "4105", "T-9", "410500000001", 5_000)
    assert down.status_code == 503 and down.json()["error"]["code"] == "TRY_AGAIN_LATER" and down.headers["retry-after"]
    assert _pay(base_url, "4103", "T-9", "410300000002", 3_000).status_code == 200
    health = httpx.get(base_url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "degraded", "cities": {"4101": "ok", "4103": "ok", "4105": "unavailable"}}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/payments/P-1", None, 404, "CITY_REQUIRED"),
        ("GET", "/cities/9999/healthz", None, 404, "UNKNOWN_CITY"),
        ("POST", "/v1/channels/wallet-nowhere/payments", b"{}", 404, "UNKNOWN_CHANNEL"),
        ("GET", "/v1/accounts/430100000001", None, 404, "UNKNOWN_CITY"),
        ("GET", "/v1/accounts/41x", None, 422, "INVALID_ACCOUNT_NO"),
        ("POST", "/v1/devices/payments", b"\xff not json", 422, "CITY_NOT_NAMED"),
        ("POST", "/v1/orders", b'{"account_no": 4101000001}', 422, "CITY_NOT_NAMED"),
        ("POST", "/v1/accounts", b"{" + b" " * 70_000 + b"}", 413, "BODY_TOO_LARGE"),
    ],
)
def test_a_request_that_names_no_city_of_the_province_is_refused_with_a_code(province, method, path, body, status, code):
    base_url, _, _ = province
    answer = httpx.request(method, base_url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == status and answer.json()["error"]["code"] == code


def test_an_account_in_the_body_chooses_the_city(province):
    base_url, _, _ = province
    answer = httpx.post(base_url + "/v1/devices/payments", json={"account_no": "410300000001", "txn_id": "K-1", "amount_fen": 100}, timeout=10)
    assert answer.status_code == 401  # Luoyang's API asked for the device's key: the body reached its city


def test_a_city_database_lost_under_load_stops_that_city_and_its_retry_books_once(province):
    base_url, urls, _ = province
    admin = _admin()
    luoyang = make_url(urls["4103"]).database
    try:
        with admin.connect() as c:  # the database goes away as a dead server would: no new connections, the open ones cut
            c.execute(text(f'ALTER DATABASE "{luoyang}" ALLOW_CONNECTIONS false'))
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{luoyang}'"))
        refused = _pay(base_url, "4103", "L-1", "410300000001", 2_000)
        assert refused.status_code == 503
        assert [_pay(base_url, "4101", f"Z-{i}", "410100000002", 1_000).status_code for i in range(5)] == [200] * 5
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{luoyang}" ALLOW_CONNECTIONS true'))
        too_soon = _pay(base_url, "4103", "L-1", "410300000001", 2_000)  # within the city's rest after a 503: the router answers
        assert too_soon.status_code == 503 and too_soon.json()["error"]["code"] == "TRY_AGAIN_LATER"
        time.sleep(Settings().province_city_rest_s + 0.1)
        retried = _pay(base_url, "4103", "L-1", "410300000001", 2_000)  # the channel's retry after Retry-After
        assert retried.status_code == 200 and retried.json()["duplicate"] is False
        assert _booked(urls["4103"]) == {"booked": (1, 2_000)}
        assert _booked(urls["4101"]) == {"booked": (5, 5_000)}
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{luoyang}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_the_group_report_and_check_gather_every_city_and_name_the_one_down(province):
    base_url, _, path = province
    assert _pay(base_url, "4101", "R-1", "410100000001", 5_000).status_code == 200
    assert _pay(base_url, "4101", "R-2", "410100000002", 2_500).status_code == 200
    assert _pay(base_url, "4103", "R-1", "410300000001", 10_000).status_code == 200
    today = datetime.now(UTC).astimezone().date()
    report = CliRunner().invoke(cli, ["province", "report", "--province", str(path), "--date", (today - timedelta(days=1)).isoformat(), "--days", "3"], env={"COLUMNS": "200"})
    assert report.exit_code == 1, report.output  # one city could not answer
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:]] for line in report.output.splitlines() if line.startswith("│")}
    assert rows["4101"][:4] == ["郑州", "2", "75.00", "2"]  # payments, yuan, purchases
    assert rows["4103"][:4] == ["洛阳", "1", "100.00", "1"]
    assert rows["4105"][1] == "down" and rows["all"][1:3] == ["3", "175.00"]
    assert "4105 安阳 unavailable" in report.output
    check = CliRunner().invoke(cli, ["province", "check", "--province", str(path)], env={"COLUMNS": "200"})
    assert check.exit_code == 1 and check.output.count("holds") == 2 and "unavailable" in check.output


def test_the_report_of_a_whole_province_up_exits_0(tmp_path, city_databases):
    path = _province_file(tmp_path, city_databases, down_city=False)
    report = CliRunner().invoke(cli, ["province", "report", "--province", str(path)], env={"COLUMNS": "200"})
    assert report.exit_code == 0, report.output
    check = CliRunner().invoke(cli, ["province", "check", "--province", str(path)])
    assert check.exit_code == 0 and "every city's ledger holds" in check.output


# --- meter messages: each city's worker on its own topics ----------------------------------------


def test_each_meter_message_reaches_its_own_city_through_its_worker(tmp_path, city_databases, broker_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    path = _province_file(tmp_path, city_databases, down_city=False, prefix=prefix)
    config = load_province(path)
    meters = {}
    for code, _ in CITIES:
        system = bootstrap(Settings(database_url=city_databases[code]))
        meter = SimulatedMeter(f"{code}0000000001")
        meter.install_key(meter_keys.export_key(meter.serial, system.new_uow(), actor="test"))
        system.engine.dispose()
        meters[code] = MqttMeter(meter, broker_url, prefix=config.city(code).topic_prefix())
        meters[code].start()
    env = {"GASWORKS_PROVINCE_FILE": str(path), "GASWORKS_MQTT_URL": broker_url, "GASWORKS_WORKER_METRICS_PORT": "0", "GASWORKS_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"}
    workers = subprocess.Popen([sys.executable, "-c", "from gasworks.entrypoints.cli.main import app; app()", "province", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _pay_in_process(city_databases["4103"], "M-1", "410300000001", 10_000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for mqtt_meter in meters.values():
                mqtt_meter.wake(datetime.now(UTC))
            if meters["4103"].meter.applied:
                break
            time.sleep(0.5)
        assert len(meters["4103"].meter.applied) == 1 and meters["4101"].meter.applied == []
        with bootstrap(Settings(database_url=city_databases["4101"])).new_uow() as uow:
            assert uow.meters.get("41010000000001").last_report_at is not None  # Zhengzhou's meter reported to Zhengzhou
        system = bootstrap(Settings(database_url=city_databases["4103"]))
        with system.new_uow() as uow:
            assert [c.state for c in uow.meter_commands.recent(limit=10)] == [CommandState.APPLIED]
        system.engine.dispose()
    finally:
        workers.terminate()
        output = workers.communicate(timeout=30)[0].decode(errors="replace")
        for mqtt_meter in meters.values():
            mqtt_meter.stop()
    assert "delivery workers for 2 cities" in output


def _pay_in_process(url: str, txn_id: str, account_no: str, fen: int) -> bool:
    from gasworks.entrypoints.api.app import create_app

    system = bootstrap(Settings(database_url=url))
    try:
        with served_in_thread(create_app(system)) as base_url:
            path = "/v1/channels/wallet-4103/payments"
            headers, body = WalletClient(key_id="w-4103", secret=SECRET).payment(path=path, txn_id=txn_id, account_no=account_no, amount_fen=fen, at=datetime.now(UTC))
            return httpx.post(base_url + path, headers=headers, content=body, timeout=10).status_code == 200
    finally:
        system.engine.dispose()


def test_the_cli_needs_a_province_file():
    result = CliRunner().invoke(cli, ["province", "report"], env={"GASWORKS_PROVINCE_FILE": ""})
    assert result.exit_code == 2 and "NO_PROVINCE" in result.output


def test_a_city_prefix_keeps_the_edges_rules_streamed_statements_and_unkept_push_secrets(province):
    base_url, urls, _ = province
    statement = httpx.post(f"{base_url}/cities/4103/v1/statements", content=b"x" * 100_000, timeout=10)
    assert statement.status_code == 401  # streamed to the route (which wants a key), not cut at the 64 KiB body bound
    push = httpx.post(f"{base_url}/cities/4103/v1/carriers/ctwing/a-guessed-secret/push", json={}, timeout=10)
    assert push.status_code in (401, 403, 404)
    system = bootstrap(Settings(database_url=urls["4103"]))
    with system.new_uow() as uow:
        paths = [row["request_summary"]["path"] for row in uow.rejections.list(limit=10)]
    system.engine.dispose()
    assert "/v1/carriers/ctwing/(secret)/push" in paths and not any("a-guessed-secret" in p for p in paths)


def test_an_account_can_only_be_opened_in_the_city_its_number_names(province):
    base_url, urls, path = province
    elsewhere = httpx.post(f"{base_url}/cities/4103/v1/accounts", json={"account_no": "410100000009", "name": "x"}, timeout=10)
    assert elsewhere.status_code == 422 and elsewhere.json()["error"]["code"] == "ACCOUNT_OF_ANOTHER_CITY"
    at_home = httpx.post(f"{base_url}/cities/4103/v1/accounts", json={"account_no": "410300000009", "name": "x"}, timeout=10)
    assert at_home.status_code == 401  # Luoyang's API took it, and asks for an operator's key
    # One opened behind the router's back (the CLI on the city's database) is found by the check.
    system = bootstrap(Settings(database_url=urls["4103"]))
    accounts.open_account(accounts.OpenAccount("410100000009", "住户", "1 栋", "华新苑", "G-01", "13800000000", "41010000000009", MeterKind.IOT), system.new_uow(), actor="test")
    system.engine.dispose()
    check = CliRunner().invoke(cli, ["province", "check", "--province", str(path)], env={"COLUMNS": "250"})
    assert check.exit_code == 1 and "ACCOUNTS_OF_ANOTHER_CITY 1 (e.g. 410100000009)" in check.output
