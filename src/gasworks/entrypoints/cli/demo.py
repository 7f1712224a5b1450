"""`gasworks demo`: a simulated city runs through the real gasworks, then the outcome is shown."""

import secrets
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gasworks.domain.access import Role
from gasworks.domain.clock import FixedClock
from gasworks.domain.errors import Conflict, InvalidInput
from gasworks.domain.money import fen_to_yuan_text
from gasworks.entrypoints.cli.common import cli_errors, lazy_module, out

if TYPE_CHECKING:
    from gasworks.services.outbound import StatementFetched
    from gasworks.sim.outcome import Report

# The simulator, SQLAlchemy and Alembic load when the demo runs, not when `gasworks --help` does.
access, reconciliation = lazy_module("gasworks.services.access"), lazy_module("gasworks.services.reconciliation")

DEMO_DATABASE = "sqlite:///gasworks-demo.db"
LARGE_CITY_HOUSEHOLDS = 20_000  # from here up (in-process), the city is kept as arrays: sim/bulk_city.py


def _yuan(fen: int) -> str:
    return f"¥{fen_to_yuan_text(fen)}"


def _span(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86_400} d {seconds % 86_400 // 3600} h"


def _fresh_database(url: str) -> None:
    """The demo writes a city into an empty database; it replaces only its own SQLite file."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url

    from gasworks.adapters.db import tables
    from gasworks.adapters.db.engine import make_engine
    from gasworks.adapters.db.migrate import upgrade

    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = Path(parsed.database or "")
        if path.exists() and path.name.startswith("gasworks-demo"):
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
        elif path.exists():
            raise Conflict(f"{path} exists and is not a demo database; give a new file", code="DEMO_NEEDS_EMPTY_DATABASE")
        return
    engine = make_engine(url)
    upgrade(engine)
    with engine.connect() as c:
        used = c.execute(select(tables.customers.c.account_no).limit(1)).first() is not None
    engine.dispose()
    if used:
        raise Conflict("the demo needs an empty database: this one has customers", code="DEMO_NEEDS_EMPTY_DATABASE")


@cli_errors
def demo(
    households: Annotated[int, typer.Option(min=10, max=1_000_000, help="Households in the city.")] = 2_000,
    days: Annotated[int, typer.Option(min=1, max=366, help="Days to simulate.")] = 30,
    seed: Annotated[int, typer.Option(help="Same seed, same city, same outcome.")] = 1,
    faults: Annotated[str, typer.Option(help="none, default or heavy.")] = "default",
    start: Annotated[str | None, typer.Option(help="First simulated day (local), YYYY-MM-DD; default: the days up to today.")] = None,
    iot_percent: Annotated[int, typer.Option(min=0, max=100, help="Share of IoT meters; the rest are card meters.")] = 60,
    database_url: Annotated[str, typer.Option("--database-url", help="Where the city's records go.")] = DEMO_DATABASE,
    statements_dir: Annotated[Path, typer.Option(help="Where the channels' daily statement files go.")] = Path("gasworks-demo-statements"),
    mqtt_url: Annotated[str | None, typer.Option("--mqtt-url", help="Meters talk through this broker instead of in-process.")] = None,
    fleet_mqtt_url: Annotated[str | None, typer.Option("--fleet-mqtt-url", help="On a closed broker: the simulated meters' `fleet` URL (--mqtt-url is the worker's).")] = None,
    mqtt_topic_prefix: Annotated[str | None, typer.Option("--mqtt-topic-prefix", help="On a closed broker: the prefix it was provisioned for (default: a random one).")] = None,
    ctwing_share: Annotated[float, typer.Option("--ctwing-share", min=0.0, max=1.0, help="Share of IoT meters behind the local CTWing platform stub (0 for none).")] = 0.05,
) -> None:
    """Simulate a city for a month through the real gasworks and show what reached the meters."""
    from sqlalchemy.engine import make_url

    from gasworks.adapters.db.engine import make_engine
    from gasworks.adapters.db.migrate import upgrade
    from gasworks.bootstrap import bootstrap
    from gasworks.config import Settings
    from gasworks.observability import configure_logging
    from gasworks.sim.channel_platforms import PLATFORM_CHANNELS
    from gasworks.sim.city import build_city
    from gasworks.sim.outcome import summarise
    from gasworks.sim.statements import write_statements
    from gasworks.sim.world import LOCAL, FaultRates, Simulation

    try:
        rates = FaultRates.preset(faults)
        first_day = date.fromisoformat(start) if start else datetime.now(LOCAL).date() - timedelta(days=days)
    except ValueError as error:
        raise InvalidInput(str(error), code="INVALID_OPTION") from None
    configure_logging(level=40)
    started = time.perf_counter()
    _fresh_database(database_url)
    begin = datetime(first_day.year, first_day.month, first_day.day, tzinfo=LOCAL)
    settings = Settings(database_url=database_url, watchdog_interval_s=10**9, ctwing_push_secret=secrets.token_urlsafe(32) if ctwing_share else "")
    engine = make_engine(database_url, sqlite_synchronous="NORMAL")  # a demo city, not money of record
    upgrade(engine)
    system = bootstrap(settings, clock=FixedClock(begin), engine=engine)
    if households >= LARGE_CITY_HOUSEHOLDS and mqtt_url is None:
        from gasworks.entrypoints.cli.bulk_demo import bulk_outcome_holds, run_bulk_city  # numpy loads only for a large city

        if not bulk_outcome_holds(run_bulk_city(system, households=households, days=days, seed=seed, iot_percent=iot_percent, begin=begin, database_url=database_url)):
            raise typer.Exit(1)
        return
    city = build_city(households, seed=seed, iot_percent=iot_percent)
    out.print(f"[bold]gasworks demo[/]: {households:,} households ({iot_percent}% IoT meters), {days} days from {first_day}, seed {seed}, faults {faults}")
    meters = f"MQTT at {mqtt_url.split('@')[-1]} (wakes grouped in 10-minute slots)" if mqtt_url else "in-process transport"
    if ctwing_share:
        meters += f"; {ctwing_share:.0%} of IoT meters through a local CTWing platform (signed API, commands cached until the meter wakes)"
    out.print(f"  records: {make_url(database_url).render_as_string(hide_password=True)}; meters: {meters}; time: virtual")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out) as progress:
        setting_up = progress.add_task("opening accounts", total=None)
        sim = Simulation(system, city, faults=rates, start=begin, mqtt_url=mqtt_url, fleet_mqtt_url=fleet_mqtt_url, mqtt_topic_prefix=mqtt_topic_prefix, ctwing_share=ctwing_share)
        progress.remove_task(setting_up)
        task = progress.add_task("simulating days", total=days)
        try:
            outcome = sim.run(days, progress=lambda done: progress.update(task, completed=done))
            report = summarise(sim, outcome, hotline=settings.service_hotline)  # before any statement repairs the books
            fetching = progress.add_task("fetching statements from the channels' platforms", total=None)
            fetched = sim.fetch_statements()
            progress.remove_task(fetching)
        finally:
            sim.close()
    show(report)
    files = write_statements(outcome.collected, statements_dir)
    out.print(
        f"\nthe channels' daily statements, from WeChat Pay's, Alipay's and the wallet's platforms through gasworks' gateways (hash, signature and format checked): "
        f"{outcome.statements_fetched_in_run} fetched by the worker each morning after 10:00 during the run, {sum(f.new for f in fetched)} (the last day's) after it; "
        f"copies of all {len(files)} in {statements_dir}/ (kiosks and counters: carried, no platform to call)"
    )
    carried = [path for path in files if path.stem[:-11] not in PLATFORM_CHANNELS]
    if not _reconcile_all(system, fetched, carried):
        raise typer.Exit(1)
    out.print(f"\nsimulated {days} days of {households:,} households in {time.perf_counter() - started:.0f} s")
    _next_steps(system, report, database_url)
    if not report.money.holds or report.truth_violations:
        raise typer.Exit(1)


def show_time_without_gas(report: "Report") -> None:
    """Time without gas and payment -> gas, by meter kind and model, and the button-press goal."""
    from gasworks.sim.outcome import BUTTON_GOAL

    off = Table(title="time without gas: valve closed (credit out) → gas available again", title_justify="left")
    for column in ("meter", "model", "spells", "median", "p95", "p99", "note"):
        off.add_column(column, justify="left" if column in ("meter", "model", "note") else "right")
    for line in report.without_gas:
        off.add_row(line.kind, line.model, f"{line.n:,}", _span(line.p50), _span(line.p95), _span(line.p99), line.how.split("(")[-1].rstrip(")"))
    out.print(off)
    paid = Table(title="payment → gas, by meter kind, model and path", title_justify="left")
    for column in ("meter", "model", "path", "purchases", "median", "p95", "p99", f"≤ {BUTTON_GOAL.seconds // 60} min of the press"):
        paid.add_column(column, justify="left" if column in ("meter", "model", "path") else "right")
    for line in report.to_gas:
        share = f"{line.within_goal_of_press / line.n:.0%}" if line.within_goal_of_press is not None and line.n else "-"
        paid.add_row(line.kind, line.model, line.how, f"{line.n:,}", _span(line.p50), _span(line.p95), _span(line.p99), share)
    out.print(paid)
    goal = report.button_goal
    if goal is None or goal.p95 is None:
        out.print("IoT with a button press: no such payment in this run")
        return
    verdict = "[bold green]met[/]" if report.button_goal_met else "[bold red]missed[/]"
    share = goal.within_goal_of_press or 0
    out.print(
        f"IoT with a button press, payment → gas: p95 {_span(goal.p95)} against the goal of {BUTTON_GOAL.seconds // 60} min: {verdict} ({goal.n:,} payments; {share / goal.n:.0%} had gas within {BUTTON_GOAL.seconds // 60} min of the press)"
    )
    carrier = report.button_carrier
    if carrier is not None and carrier.p95 is not None:
        within = carrier.within_goal_of_press or 0
        out.print(
            f"  behind CTWing: p95 {_span(carrier.p95)} ({carrier.n:,} payments; {within / carrier.n:.0%} within {BUTTON_GOAL.seconds // 60} min of the press): "
            "gasworks answers the module's report, and a module that sleeps at once (half the wakes, the stub's assumption) gets it at its next report"
        )


def show(report: "Report") -> None:
    channels = Table(title="payments by channel", title_justify="left")
    for column in ("channel", "collected", "amount", "booked", "held", "never reached gasworks"):
        channels.add_column(column, justify="left" if column == "channel" else "right")
    for line in report.channels:
        channels.add_row(line.channel_id, f"{line.collected:,}", _yuan(line.collected_fen), f"{line.booked:,}", f"{line.held:,}",
                         f"{line.never_reached:,} ({_yuan(line.never_reached_fen)})" if line.never_reached else "0")  # fmt: skip
    out.print(channels)

    speed = Table(title=f"reached gas: {report.reached_gas:,} of {report.booked_purchases:,} purchases", title_justify="left")
    for column in ("path", "purchases", "median", "p95", "p99"):
        speed.add_column(column, justify="left" if column == "path" else "right")
    for line in report.latency:
        speed.add_row(line.what, f"{line.n:,}", _span(line.p50), _span(line.p95), _span(line.p99))
    out.print(speed)

    show_time_without_gas(report)

    stuck = Table(title="not at the meter yet, and why (what the resident is told)", title_justify="left")
    for column in ("status", "reason", "payments", "amount"):
        stuck.add_column(column, justify="right" if column in ("payments", "amount") else "left")
    for line in report.stuck:
        stuck.add_row(line.status, line.reason, f"{line.n:,}", _yuan(line.amount_fen))
    out.print(stuck)

    faults = Table(title="faults injected, and what gasworks did", title_justify="left")
    for column in ("fault", "injected", "outcome"):
        faults.add_column(column, justify="right" if column == "injected" else "left")
    for line in report.faults:
        faults.add_row(line.fault, f"{line.injected:,}", line.outcome)
    out.print(faults)

    m = report.money
    money = Table(title="the money check, to the fen", title_justify="left")
    money.add_column("")
    money.add_column("amount", justify="right")
    for label, fen in (
        ("paid by residents (channels' records)", m.collected_fen),
        ("  of which reached gasworks", m.reached_fen),
        ("  of which never reached gasworks (for reconciliation)", m.never_reached_fen),
        ("owed by channels (gasworks' ledger)", m.clearing_fen),
        ("  on customers' balances", m.on_balances_fen),
        ("  bought, on its way to meters", m.in_delivery_fen),
        ("  applied at meters", m.gas_applied_fen),
        ("  in suspense, held for an operator", m.suspense_fen),
        ("  refunds asked of channels, not yet paid back", m.refunds_in_flight_fen),
        ("paid back by channels on gasworks' request (their records)", m.refunded_fen),
    ):
        money.add_row(label, _yuan(fen))
    money.add_row("gas applied at the meters (the meters' own count)", f"{m.litres_applied_at_meters:,} L")
    money.add_row("  of which gasworks has proof (ack, report, card back)", f"{m.litres_proven_applied:,} L")
    money.add_row("  applied at a meter without a credit order (must be 0)", f"{m.meter_purchases_unknown_to_gasworks}")
    money.add_row("proven applied, not at the meter (must be 0)", f"{m.proven_but_not_at_meter}")
    out.print(money)
    verdict = "[bold green]holds[/]" if m.holds else "[bold red]BROKEN[/] " + "; ".join(m.ledger_findings[:3])
    out.print(f"money check: {verdict}")
    truth = "[bold green]never[/]" if not report.truth_violations else f"[bold red]{len(report.truth_violations)} times[/]: {report.truth_violations[:3]}"
    out.print(f"'gas available' shown before the meter applied it: {truth} ({report.truth_checks:,} purchases checked as they were applied)")


def _reconcile_all(system, fetched: "list[StatementFetched]", carried: list[Path]) -> bool:  # noqa: ANN001
    """The runs of the statements fetched, and of the files carried (reconciled here); True if the ledger still holds afterwards."""
    from gasworks.services.checks import check_ledger

    verdicts: Counter = Counter()
    classes: Counter = Counter()
    repaired_fen = 0
    runs = [f.report for f in fetched]
    for path in carried:
        channel_id, day = path.stem[:-11], date.fromisoformat(path.stem[-10:])
        imported = reconciliation.import_statement(channel_id=channel_id, statement_date=day, filename=path.name, raw=path.read_bytes(), uow=system.new_uow(), actor="demo")
        runs.append(reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="demo"))
    for run in runs:
        verdicts[run.verdict] += 1
        for d in run.discrepancies:
            classes[(d.klass.value, d.state.value)] += 1
            if d.state.value == "repaired":
                repaired_fen += d.statement_amount_fen or 0
    table = Table(title="three-way reconciliation of those statements", title_justify="left")
    table.add_column("class")
    table.add_column("state")
    table.add_column("count", justify="right")
    for (klass, state), n in sorted(classes.items()):
        table.add_row(klass, state, f"{n:,}")
    out.print(table)
    ledger = check_ledger(system.new_uow())
    out.print(f"runs: {', '.join(f'{n} {v}' for v, n in sorted(verdicts.items()))}; booked from statements: {_yuan(repaired_fen)}; ledger after repairs: {'[bold green]holds[/]' if ledger.ok else '[bold red]BROKEN[/]'}")
    return ledger.ok


def _next_steps(system, report: "Report", database_url: str) -> None:  # noqa: ANN001
    from gasworks.services.timeline import resident_token

    _, operator_key = access.create_api_key(name="demo operator", role=Role.OPERATOR, channel_id=None, uow=system.new_uow(), actor="demo")
    out.print("\n[bold]Look around[/] (the records stay in the database above):")
    url_option = "" if database_url == DEMO_DATABASE else f" --database-url '{database_url}'"
    out.print(f"  uv run gasworks serve --database-url {DEMO_DATABASE}" if not url_option else f"  uv run gasworks serve{url_option}")
    print(f"  operator key (shown once): {operator_key}")
    print("  e.g. curl -H 'Authorization: Bearer <key>' http://127.0.0.1:8000/v1/alerts")
    for what, payment_id in sorted(report.sample_payment_ids.items()):
        token = resident_token(system.resident_link_secret, payment_id)
        print(f"  resident's page, {what}: http://127.0.0.1:8000/p/{payment_id}?t={token}")
