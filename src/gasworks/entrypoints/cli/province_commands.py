"""`gasworks province …`: one deployment for a group of city utilities, each city on its own database.

The province file (GASWORKS_PROVINCE_FILE or --province) lists the cities: code (the first four
digits of their account numbers), name, database URL, channels. Each city is administered as a
city on its own (`gasworks accounts open … --database-url <the city's>`); these commands act on all.
"""

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from gasworks.domain.errors import InvalidInput
from gasworks.domain.money import fen_to_yuan_text
from gasworks.entrypoints.cli.common import cli_errors, err, lazy_module, out

if TYPE_CHECKING:
    from gasworks.config import ProvinceConfig, Settings

province_app = typer.Typer(help="A province: several city utilities, each city on its own database (a shard).", no_args_is_help=True)

reason_of = lazy_module("gasworks.services.province").reason_of

ProvinceFile = Annotated[Path | None, typer.Option("--province", help="The province file (TOML; GASWORKS_PROVINCE_FILE).")]


def register(app: typer.Typer) -> None:
    app.add_typer(province_app, name="province")


def _load(province_file: Path | None) -> tuple["ProvinceConfig", "Settings"]:
    from gasworks.config import Settings, load_province
    from gasworks.observability import configure_logging

    settings = Settings(**({"province_file": str(province_file)} if province_file else {}))
    if not settings.province_file:
        raise InvalidInput("no province file: give --province FILE or GASWORKS_PROVINCE_FILE (README, 'A province of cities')", code="NO_PROVINCE")
    configure_logging(json=settings.log_json)
    return load_province(settings.province_file), settings


@province_app.command("migrate")
@cli_errors
def migrate(province: ProvinceFile = None) -> None:
    """Every city's database to the latest schema; exit 1 if a city cannot be reached."""
    config, settings = _load(province)
    if _migrate_every_city(config, settings):
        raise typer.Exit(1)


def _migrate_every_city(config: "ProvinceConfig", settings: "Settings") -> int:
    """Migrates each city that answers, names each that does not; how many did not."""
    from gasworks.adapters.db.engine import is_cut_off
    from gasworks.adapters.db.migrate import current_revision
    from gasworks.bootstrap import bootstrap

    failed = 0
    for city in config.cities:
        sys_ = bootstrap(config.city_settings(settings, city.code))
        try:
            sys_.migrate()
            out.print(f"{city.code} {city.name}: at revision {current_revision(sys_.engine)}")
        except Exception as error:
            if not is_cut_off(error):
                raise
            failed += 1
            err.print(f"[bold red]{city.code} {city.name}: database unavailable[/] ({reason_of(error)})")
        finally:
            sys_.engine.dispose()
    return failed


@province_app.command("check")
@cli_errors
def check(province: ProvinceFile = None) -> None:
    """`gasworks check` on every city's ledger; exit 1 if any city's is broken or cannot be read."""
    from gasworks.adapters.db.engine import is_cut_off, require_current_schema
    from gasworks.bootstrap import bootstrap
    from gasworks.services.checks import check_ledger
    from gasworks.services.province import accounts_of_other_cities

    config, settings = _load(province)
    table = Table(title="ledger check by city")
    for column in ("city", "name", "result", "payments", "¥ received", "findings"):
        table.add_column(column, justify="right" if column in ("payments", "¥ received") else "left")
    failed = 0
    for city in config.cities:
        sys_ = bootstrap(config.city_settings(settings, city.code))
        try:
            require_current_schema(sys_.engine)
            report = check_ledger(sys_.new_uow())
            misplaced, examples = accounts_of_other_cities(city.code, sys_.new_uow())
        except InvalidInput as not_current:
            failed += 1
            table.add_row(city.code, city.name, "[red]not migrated[/]", "", "", f"{not_current.code}: gasworks province migrate")
            continue
        except Exception as error:
            if not is_cut_off(error):
                raise
            failed += 1
            table.add_row(city.code, city.name, "[red]unavailable[/]", "", "", reason_of(error)[:80])
            continue
        finally:
            sys_.engine.dispose()
        payments = sum(n for n, _ in report.payments_by_state.values())
        fen = sum(f for _, f in report.payments_by_state.values())
        findings = [f"{f.code} {f.subject}" for f in report.findings[:3]]
        if misplaced:
            findings.append(f"ACCOUNTS_OF_ANOTHER_CITY {misplaced:,} (e.g. {', '.join(examples)})")
        holds = report.ok and not misplaced
        failed += not holds
        table.add_row(city.code, city.name, "[green]holds[/]" if holds else "[red]BROKEN[/]", f"{payments:,}", fen_to_yuan_text(fen), "; ".join(findings))
    out.print(table)
    if failed:
        err.print(f"[bold red]{failed} of {len(config.cities)} cities not proven[/]")
        raise typer.Exit(1)
    out.print(f"[bold green]every city's ledger holds[/] ({len(config.cities)} cities)")


@province_app.command("report")
@cli_errors
def report(
    province: ProvinceFile = None,
    day: Annotated[str | None, typer.Option("--date", help="The local day (YYYY-MM-DD, GASWORKS_LOCAL_TIMEZONE); default today.")] = None,
    days: Annotated[int, typer.Option(help="Days from --date on.", min=1, max=366)] = 1,
) -> None:
    """The group's figures by city: payments, time from payment to gas, arrears (exit 1 if a city is unavailable).

    A city that cannot answer is named unavailable; the others are reported all the same."""
    from gasworks.adapters.db.engine import is_cut_off, is_schema_behind
    from gasworks.bootstrap import bootstrap
    from gasworks.domain.province import CityFigures
    from gasworks.services.province import group_report

    config, settings = _load(province)
    zone = ZoneInfo(settings.local_timezone)
    try:
        first = date.fromisoformat(day) if day else datetime.now(zone).date()
    except ValueError:
        raise InvalidInput(f"--date is YYYY-MM-DD, got {day[:20]!r}", code="INVALID_DATE") from None
    since = datetime.combine(first, time(0), zone)
    until = since + timedelta(days=days)
    systems = {city.code: bootstrap(config.city_settings(settings, city.code)) for city in config.cities}
    try:
        figures = group_report(
            config.province(), {code: s.new_uow for code, s in systems.items()}, since, until,
            is_unavailable=lambda error: is_cut_off(error) or is_schema_behind(error), answer_within_s=settings.province_report_answer_within_s,
        )  # fmt: skip
    finally:
        for s in systems.values():
            s.engine.dispose()
    out.print("paid: payments received; buys: purchases they made; gas on: applied at the meter; to gas: from paid to applied; owing: accounts in arrears")
    table = Table(title=f"province report, {first.isoformat()}" + (f" + {days - 1} days" if days > 1 else "") + f" ({settings.local_timezone})")
    for column in ("city", "name", "paid", "¥ paid", "buys", "gas on", "to gas p50", "p90", "max", "owing", "¥ owed"):
        table.add_column(column, justify="left" if column in ("city", "name") else "right")
    unavailable = [city for city in figures if not isinstance(city, CityFigures)]
    available = [city for city in figures if isinstance(city, CityFigures)]
    for city in figures:
        if isinstance(city, CityFigures):
            ttg = city.time_to_gas
            durations = (_duration(ttg.p50_s), _duration(ttg.p90_s), _duration(ttg.max_s))
            table.add_row(city.code, city.name, *_money_and_gas(city.payments.count, city.payments.fen, ttg.purchases, ttg.applied, city.accounts_in_arrears, city.arrears_fen, durations))
        else:
            table.add_row(city.code, city.name, "[red]down[/]", *[""] * 8)
    sums = [sum(column) for column in zip(*((c.payments.count, c.payments.fen, c.time_to_gas.purchases, c.time_to_gas.applied, c.accounts_in_arrears, c.arrears_fen) for c in available), strict=True)]
    table.add_row("all", f"{len(available)}/{len(figures)} up", *(_money_and_gas(*sums, ("", "", "")) if available else [""] * 9), style="bold")
    out.print(table)
    for city in unavailable:
        err.print(f"[bold red]{city.code} {city.name} unavailable[/]: {city.reason}")
    if unavailable:
        raise typer.Exit(1)


def _money_and_gas(payments: int, fen: int, purchases: int, applied: int, owing: int, owed_fen: int, durations: tuple[str, str, str]) -> list[str]:
    return [f"{payments:,}", fen_to_yuan_text(fen), f"{purchases:,}", f"{applied:,}", *durations, f"{owing:,}", fen_to_yuan_text(owed_fen)]


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


@province_app.command("serve")
@cli_errors
def serve(
    province: ProvinceFile = None,
    host: Annotated[str | None, typer.Option(help="Bind address (GASWORKS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (GASWORKS_PORT).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="API processes (uvicorn workers), each with every city's pool.", min=1, max=64)] = 1,
) -> None:
    """Migrate every city that answers and serve the province's API, each request to its city.

    Delivery runs apart: `gasworks province worker`."""
    import os

    import uvicorn

    from gasworks.entrypoints.api.province import PROVINCE_APP_FACTORY, create_province_app

    config, settings = _load(province)
    if _migrate_every_city(config, settings):
        err.print("[yellow]serving the cities that answered; the others answer 503 until their database is back (then run `gasworks province migrate`)[/]")
    host, port = host or settings.host, port or settings.port
    out.print(f"gasworks province on http://{host}:{port}: {', '.join(f'{c.code} {c.name}' for c in config.cities)}")
    out.print(f"  health: http://{host}:{port}/healthz; a city's own API: http://{host}:{port}/cities/<code>/v1/ (docs: /cities/<code>/docs)")
    if workers == 1:
        uvicorn.run(create_province_app(config, settings), host=host, port=port, log_level="info")
        return
    os.environ["GASWORKS_PROVINCE_FILE"] = str(Path(settings.province_file).resolve())
    uvicorn.run(PROVINCE_APP_FACTORY, factory=True, workers=workers, host=host, port=port, log_level="info", timeout_worker_healthcheck=60)


@province_app.command("worker")
@cli_errors
def worker(province: ProvinceFile = None) -> None:
    """A delivery worker process per city, on its database and its meters' topics (runs until stopped).

    Each is restarted with backoff when it stops: a city whose database is down waits alone."""
    import signal
    import threading

    from gasworks.entrypoints.workers.province_workers import CityWorkers

    config, settings = _load(province)
    if not settings.mqtt_url and not settings.uplink_queue_urls:
        raise InvalidInput("no broker configured (GASWORKS_MQTT_URL, or GASWORKS_UPLINK_QUEUE_URLS for NATS): a province's workers run as processes of their own", code="NO_BROKER")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    city_workers = CityWorkers({city.code: config.city_settings(settings, city.code, index) for index, city in enumerate(config.cities)})
    city_workers.start()
    out.print(f"delivery workers for {len(config.cities)} cities: " + ", ".join(f"{c.code} on {c.topic_prefix()}/+/up" for c in config.cities))
    try:
        city_workers.supervise(stop)
    finally:
        city_workers.stop()


@province_app.command("drill")
@cli_errors
def drill(
    cities: Annotated[int, typer.Option(help="Cities, each on a PostgreSQL server of its own.", min=2, max=5)] = 3,
    kill: Annotated[str, typer.Option(help="The city whose database server dies.")] = "4103",
    rate: Annotated[int, typer.Option(help="Signed wallet payments per second to each city.", min=1, max=200)] = 10,
    before_kill_s: Annotated[float, typer.Option(help="Seconds of load before the kill.", min=1)] = 10.0,
    down_s: Annotated[float, typer.Option(help="Seconds the city's server stays dead.", min=1)] = 20.0,
    after_restart_s: Annotated[float, typer.Option(help="Seconds of load after it is back.", min=1)] = 15.0,
) -> None:
    """Kill one city's database server under load: the other cities carry on, nothing is lost or doubled (exit 1 if not)."""
    from gasworks.entrypoints.cli.soak import show_drill
    from gasworks.sim.province_drill import ProvinceDrill, ProvinceDrillOptions

    try:
        options = ProvinceDrillOptions(cities=cities, kill=kill, payments_per_s_per_city=rate, before_kill_s=before_kill_s, down_s=down_s, after_restart_s=after_restart_s)
        report = ProvinceDrill(options, say=lambda line: out.print(f"[dim]{line}[/]")).run()
    except ValueError as error:
        raise InvalidInput(str(error), code="INVALID_DRILL_OPTION") from None
    rows: list[tuple[str, str]] = []
    for code, c in report.cities.items():
        name = f"{code}{' (killed)' if code == report.killed else ''}"
        rows.append((f"{name}: sent / acknowledged / booked", f"{c.sent:,} / {c.acknowledged:,} / {c.booked:,}"))
        rows.append((f"{name}: lost / doubled / unanswered", f"{c.lost} / {c.doubled} / {c.unanswered}"))
        refused = ", ".join(f"{n:,}×{status}" for status, n in sorted(c.refused_while_down.items())) or "none"
        rows.append((f"{name}: attempts refused while {report.killed} was down", refused))
        if code != report.killed:
            rows.append((f"{name}: answered p50 / p99, before → while down", f"{c.p(c.answered_ms_before, 50)} / {c.p(c.answered_ms_before, 99)} → {c.p(c.answered_ms_while_down, 50)} / {c.p(c.answered_ms_while_down, 99)}"))
    if report.back_after_restart_s is None or report.without_service_s is None:
        rows.append((f"{report.killed}: its first booking after the restart", "never"))
    else:
        rows.append((f"{report.killed}: restart → first booking (crash recovery included)", f"{report.back_after_restart_s:.1f} s"))
        rows.append((f"{report.killed}: without service, kill → first booking", f"{report.without_service_s:.1f} s"))
    rows.append(("gasworks province check", "passed" if report.check_exit == 0 else f"FAILED (exit {report.check_exit})"))
    show_drill("city shard killed under load", tuple(rows), ok=report.ok, wall_s=report.wall_s)
