"""A small seeded city through the real gasworks: money holds, the truth holds, every fault is caught or listed."""

import dataclasses

import pytest
from typer.testing import CliRunner

from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.clock import FixedClock
from gasworks.entrypoints.cli.main import app
from gasworks.sim.city import build_city
from gasworks.sim.outcome import summarise
from gasworks.sim.world import FaultRates, Simulation, simulation_start


def simulate(url: str, *, households: int = 120, days: int = 8, seed: int = 3, faults: str | FaultRates = "heavy", mqtt_url: str | None = None):
    start = simulation_start()
    system = bootstrap(Settings(database_url=url, watchdog_interval_s=10**9), clock=FixedClock(start))
    upgrade(system.engine)  # a no-op on the fixtures' databases, which are migrated already
    sim = Simulation(system, build_city(households, seed=seed), faults=FaultRates.preset(faults) if isinstance(faults, str) else faults, start=start, mqtt_url=mqtt_url)
    try:
        outcome = sim.run(days)
    finally:
        sim.close()
    report = summarise(sim, outcome, hotline="12319")
    system.engine.dispose()
    return sim, outcome, report


def assert_faults_caught_and_truth_kept(outcome, report) -> None:
    assert report.money.holds, report.money
    assert report.truth_checks > 0 and report.truth_violations == []
    listed = {(line.status, line.reason) for line in report.stuck}
    for collected in outcome.collected:
        if collected.fault == "channel never notified":
            assert collected.reached_gasworks, f"{collected.channel_txn_id} was lost and never recovered"
        if not collected.reached_gasworks:
            assert any(status == "NEVER_REACHED" and collected.channel_id in reason for status, reason in listed)
    waiting = sum(line.n for line in report.stuck if line.status not in ("NEVER_REACHED", "HELD"))
    assert waiting == report.booked_purchases - report.reached_gas
    assert all(line.reason for line in report.stuck)
    assert report.reached_gas > 0


def test_a_faulty_week_in_a_small_city_keeps_the_money_and_the_truth(database_url):
    """Lost notifications are recovered or listed as never reached; every purchase not at its meter
    is listed with what the resident is told; nothing is shown applied before the meter applied it."""
    _, outcome, report = simulate(database_url)
    injected = outcome.faults_injected
    for fault in ("notification lost", "notification duplicated", "notification delayed (reordered)", "meter acknowledgement lost", "meter sleeps for days"):
        assert injected[fault] > 0, f"the heavy preset should have injected {fault}"
    assert_faults_caught_and_truth_kept(outcome, report)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_worker_recovers_orders_and_fetches_statements_from_the_channels_platforms(database_url):
    """Over real HTTP with real signatures: a lost order is booked by asking its platform; each
    morning the worker fetches yesterday's statement from each platform, which books what a wallet
    lost on the way; an order paid twice is held, refunded by an operator, asked of the platform by
    the worker, and refunded only when the platform says the money went back."""
    faults = dataclasses.replace(FaultRates.preset("heavy"), success_before_booking=0.3, order_paid_twice=0.3)
    sim, outcome, report = simulate(database_url, households=150, days=5, seed=5, faults=faults)
    wechat_queries = [call for call in sim.platforms.wechat.calls if call.startswith("GET /v3/pay/transactions/out-trade-no/")]
    assert outcome.recovered_by_query > 0 and wechat_queries
    days = outcome.days + 1  # the day before the run as well: the channel's bill with no gas payments
    assert outcome.statements_fetched_in_run == 3 * days - 3  # the run's last day is fetched the next morning, after it
    assert {channel for channel, _ in sim.platforms.statements_served()} == {"wechat", "alipay", "wo-wallet"}
    lost_by_wallet = [c for c in outcome.collected if c.fault.startswith("wallet showed success")]
    assert lost_by_wallet and outcome.booked_from_statements > 0
    paid_twice = [c for c in outcome.collected if c.fault == "order paid twice"]
    assert paid_twice and outcome.refunds_requested == outcome.refunds_confirmed > 0  # refunded at the platform, confirmed by the worker asking
    # Whichever of the two payments reached gasworks second is the one held and refunded.
    refunded = [c for c in outcome.collected if c.refunded_at is not None]
    assert len(refunded) == outcome.refunds_confirmed == len(sim.platforms.wechat.refund_calls)
    assert all(sum(1 for c in outcome.collected if c.out_trade_no == r.out_trade_no) == 2 for r in refunded)
    assert report.money.holds and not sim.platforms.wechat.refused and not sim.platforms.alipay.refused and not sim.platforms.wallet.refused


def test_a_faulty_city_on_postgresql_and_a_real_mosquitto(postgres_only_url, broker_url):
    _, outcome, report = simulate(postgres_only_url, households=60, days=4, seed=4, mqtt_url=broker_url)
    assert outcome.faults_injected["meter acknowledgement lost"] > 0
    assert_faults_caught_and_truth_kept(outcome, report)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_same_seed_gives_the_same_city_and_the_same_outcome(database_url, tmp_path):
    first = simulate(database_url, households=60, days=5, seed=11)[2]
    second = simulate(f"sqlite:///{tmp_path / 'again.db'}", households=60, days=5, seed=11)[2]
    for field in ("channels", "latency", "stuck", "faults", "reached_gas", "booked_purchases"):
        assert getattr(first, field) == getattr(second, field), field
    assert first.money == second.money


def test_the_demo_runs_on_the_embedded_defaults_and_says_the_money_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--households", "40", "--days", "3"])
    assert result.exit_code == 0, result.output
    assert "money check: holds" in result.output
    assert "three-way reconciliation" in result.output and "ledger after repairs: holds" in " ".join(result.output.split())
    assert "gas available' shown before the meter applied it: never" in result.output
    assert "uv run gasworks serve --database-url sqlite:///gasworks-demo.db" in result.output
    assert (tmp_path / "gasworks-demo.db").exists()
    again = CliRunner().invoke(app, ["demo", "--households", "40", "--days", "3"])
    assert again.exit_code == 0  # its own file is replaced


def test_the_demo_refuses_a_database_that_is_not_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "records.db").write_bytes(b"")
    result = CliRunner().invoke(app, ["demo", "--households", "40", "--days", "1", "--database-url", f"sqlite:///{tmp_path / 'records.db'}"])
    assert result.exit_code == 2 and "DEMO_NEEDS_EMPTY_DATABASE" in result.output
    bad = CliRunner().invoke(app, ["demo", "--faults", "apocalyptic"])
    assert bad.exit_code == 2 and "INVALID_OPTION" in bad.output


def test_each_channel_writes_its_daily_statement_with_every_payment_once(tmp_path):
    import csv

    from gasworks.sim.statements import write_statements

    _, outcome, _ = simulate(f"sqlite:///{tmp_path / 'g.db'}", households=80, days=4, seed=5)
    files = write_statements(outcome.collected, tmp_path / "statements")
    listed: list[str] = []
    for path in files:
        channel = path.name.rsplit("-", 3)[0]
        if channel == "wechat":
            rows = list(csv.reader(path.read_text("utf-8").splitlines()))
            body = rows[1:-2]
            assert all(cell.startswith("`") for row in body for cell in row) and len(rows[0]) == 27
            assert int(rows[-1][0].lstrip("`")) == len(body)  # the summary row counts the trades
            listed += [row[5].lstrip("`") for row in body]
        elif channel == "alipay":
            text = path.read_bytes().decode("gbk")  # Alipay's bills are GBK
            body = [line for line in text.splitlines() if line and not line.startswith("#")][1:]
            assert f"#交易合计：{len(body)}笔" in text
            listed += [line.split(",")[0].strip() for line in body]
        else:
            rows = list(csv.reader(path.read_text("utf-8").splitlines()))
            assert rows[-1][0] == "# total" and int(rows[-1][1]) == len(rows) - 2
            listed += [row[0] for row in rows[1:-1]]
    assert sorted(listed) == sorted(c.channel_txn_id for c in outcome.collected)  # lost ones too, duplicates once


def test_residents_without_gas_and_the_report_of_time_to_gas_by_meter_model(database_url):
    """A fault-free fortnight: every model is in the city; residents whose gas stops pay, and most
    press the button; the report gives time without gas and payment -> gas by kind and model, and a
    payment followed by the button press reaches the meter within 10 minutes of the press."""
    sim, outcome, report = simulate(database_url, households=200, days=14, seed=2, faults="none")
    assert report.money.holds and report.truth_violations == []
    models = {h.model for h in sim.city.households if h.model}
    assert models == {"cjt188-sm4", "cjt188-aes", "cjt188-money"}
    with sim.system.new_uow() as uow:
        assert {link.model for h in sim.city.households if h.model and (link := uow.meters.get(h.serial))} == models
    assert {line.kind for line in report.without_gas} == {"iot", "card"}
    assert all(line.n > 0 and line.p50 <= line.p95 <= line.p99 for line in report.without_gas)
    pressed = [line for line in report.to_gas if line.how == "paid, then pressed the button"]
    assert pressed and all(line.within_goal_of_press == line.n for line in pressed)  # in-process: the press brings the gas at once
    assert report.button_goal is not None and report.button_goal.n == sum(line.n for line in pressed)
    waited = [line for line in report.to_gas if line.how == "waited for the meter's report"]
    assert waited and all(line.within_goal_of_press is None for line in waited)
    assert outcome.kiosk_walks_m and max(outcome.kiosk_walks_m) < 20_000
    money_meters = [h for h in sim.city.households if h.model == "cjt188-money"]
    assert any(h.meter.applied_fen for h in money_meters)  # money meters are written fen, and applied them
