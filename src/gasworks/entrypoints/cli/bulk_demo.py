"""`gasworks demo` for a large city (sim/bulk_city.py): the register opened in bulk, the meters' daily
reports taken a batch per transaction, a progress bar with rate and ETA, then the money check."""

import time
from datetime import datetime

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url

from gasworks.bootstrap import System
from gasworks.domain.money import fen_to_yuan_text
from gasworks.entrypoints.cli.common import out
from gasworks.sim.bulk_city import BulkCity, BulkOutcome, BulkSimulation


class RateColumn(ProgressColumn):
    """Items per second so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=out,
    )  # fmt: skip


def run_bulk_city(system: System, *, households: int, days: int, seed: int, iot_percent: int, begin: datetime, database_url: str) -> BulkOutcome:
    started = time.perf_counter()
    out.print(f"[bold]gasworks demo[/], large city: {households:,} households ({iot_percent}% IoT meters), {days} days from {begin.date()}, seed {seed}")
    out.print(f"  records: {make_url(database_url).render_as_string(hide_password=True)}; meters: in-process transport, reports taken in batches; time: virtual")
    out.print("  (no faults injected on this path, and card households' kiosk visits are not simulated: use fewer households for those)")
    city = BulkCity(households, seed=seed, iot_percent=iot_percent)
    sim = BulkSimulation(system, city, start=begin)
    with progress_bar() as progress:
        opening = progress.add_task("opening accounts", total=households)
        sim.open_accounts(progress=lambda done: progress.update(opening, completed=done))
        running = progress.add_task("reports and payments", total=sim.events_per_day() * days)
        try:
            outcome = sim.run(days, progress=lambda done: progress.update(running, completed=done))
        finally:
            sim.close()
        progress.update(running, total=max(progress.tasks[running].completed, 1))
    show_bulk(outcome)
    out.print(f"\nsimulated {days} days of {households:,} households in {time.perf_counter() - started:.0f} s "
              f"(accounts {outcome.open_s:.0f} s, days {outcome.run_s:.0f} s); peak RSS {outcome.peak_rss_mib:,} MiB")  # fmt: skip
    return outcome


def show_bulk(o: BulkOutcome) -> None:
    table = Table(title="the city's day(s), through the real gasworks", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, value in (
        ("households (IoT meters)", f"{o.households:,} ({o.iot_meters:,})"),
        ("meter reports sent (sealed CJ/T 188 frames)", f"{o.reports_sent:,}"),
        ("  taken in batches (many per transaction)", f"{o.reports_in_batches:,}"),
        ("  uplinks taken one by one (acknowledgements, meters with commands)", f"{o.uplinks_one_by_one:,}"),
        ("payments made (wallet, signed)", f"{o.payments_made:,} (¥{fen_to_yuan_text(o.payments_fen)})"),
        ("  booked by gasworks, each exactly once", f"{o.payments_booked:,}"),
        ("purchases applied at the meters (the meters' own count)", f"{o.purchases_applied_at_meters:,} ({o.litres_applied_at_meters:,} L)"),
        ("  of which gasworks has proof", f"{o.purchases_proven_applied:,}"),
    ):
        table.add_row(label, value)
    out.print(table)
    ledger = o.ledger
    holds = ledger is not None and ledger.ok
    out.print(f"money check (gasworks check): {'[bold green]holds[/]' if holds else '[bold red]BROKEN[/] ' + str(ledger.findings[:3] if ledger else '')}")
    truth = "[bold green]never[/]" if not o.truth_violations else f"[bold red]{len(o.truth_violations)} times[/]: {o.truth_violations[:3]}"
    out.print(f"'gas available' shown before the meter applied it: {truth}")


def bulk_outcome_holds(o: BulkOutcome) -> bool:
    return o.ledger is not None and o.ledger.ok and not o.truth_violations and o.payments_booked == o.payments_made and o.purchases_proven_applied <= o.purchases_applied_at_meters
