"""`gasworks soak`: real gasworks processes under chaos, and the proof that nothing was lost."""

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from gasworks.domain.money import fen_to_yuan_text
from gasworks.entrypoints.cli.common import cli_errors, err, out

if TYPE_CHECKING:
    from gasworks.sim.soak import SoakReport


@cli_errors
def soak(
    minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="How long the chaos runs (rounds of 10 s).")] = 1,
    seed: Annotated[int, typer.Option(help="Same seed, same plan: the same payments, faults and forgeries.")] = 1,
    households: Annotated[int, typer.Option(min=4, max=10_000, help="IoT meters (and accounts) in the soak's city.")] = 24,
    payments_per_minute: Annotated[int, typer.Option(min=1, max=100_000, help="Honest payments planned per minute.")] = 90,
    forgeries_per_minute: Annotated[int, typer.Option(min=0, max=10_000, help="Forged messages per minute, every kind in turn.")] = 28,
    keep: Annotated[bool, typer.Option(help="Keep the run's directory (databases, logs) even when it passes.")] = False,
) -> None:
    """Run real `gasworks serve` and workers on a private PostgreSQL and Mosquitto, kill and restart
    them at random, harm and forge messages, and prove the invariants after every fault."""
    from gasworks.observability import configure_logging
    from gasworks.sim.soak import (  # the simulator's imports only when soaking
        Soak,
        SoakOptions,
    )

    configure_logging(level=40)
    options = SoakOptions(minutes, seed, households, payments_per_minute, forgeries_per_minute, keep)
    out.print(f"[bold]gasworks soak[/]: {minutes} min, seed {seed}, {households} meters, {payments_per_minute} payments and {forgeries_per_minute} forgeries a minute")
    started = time.monotonic()
    report = Soak(options, say=lambda line: out.print(f"  {time.monotonic() - started:5.1f} s  {line}")).run()
    show(report)
    if not report.ok:
        raise typer.Exit(1)


def show(report: "SoakReport") -> None:
    from gasworks.sim.chaos import FORGERIES

    faults = Table(title="faults injected", title_justify="left")
    faults.add_column("fault", no_wrap=True)
    faults.add_column("count", justify="right")
    for name, n in sorted(report.faults.items()):
        faults.add_row(name, f"{n:,}")
    out.print(faults)

    forged = Table(title="forgeries: injected, refused, recorded (GET /v1/rejections)", title_justify="left")
    forged.add_column("kind", no_wrap=True)
    for column in ("injected", "refused", "recorded", "rows"):
        forged.add_column(column, justify="right")
    forged.add_column("note", ratio=1)
    for name, count in report.forgeries.items():
        kind = FORGERIES[name]
        if not kind.available:
            forged.add_row(name, "-", "-", "-", "-", f"[dim]not yet: {kind.note}[/]")
            continue
        recorded = f"{count.recorded:,}" if kind.recorded_today else f"[yellow]{count.recorded:,}[/]"
        forged.add_row(name, f"{count.injected:,}", f"{count.refused:,}", recorded, f"{count.rows:,}", kind.note)
    out.print(forged)
    out.print("[dim]recorded: forgeries found among the rejections; rows: the rejection records they left (each worker that hears a forged frame records it)[/]")

    held = Table(title=f"invariants, checked after every fault and at the end ({report.checks_run} checks)", title_justify="left")
    held.add_column("invariant", no_wrap=True)
    held.add_column("held", justify="right")
    held.add_column("verdict")
    for name, (ok, n) in report.invariants.items():
        held.add_row(name, f"{ok}/{n}", "[bold green]held[/]" if ok == n and n else "[bold red]BROKEN[/]")
    out.print(held)
    out.print(
        f"honest payments: {report.honest_booked:,} of {report.honest_sent:,} booked once "
        f"(¥{fen_to_yuan_text(report.booked_fen)} booked of ¥{fen_to_yuan_text(report.honest_fen)} paid); "
        f"purchases applied at meters: {report.purchases_applied:,} of {report.purchases_issued:,}"
    )
    out.print(f"`gasworks check` at the end: {'[bold green]passed[/]' if report.gasworks_check_exit == 0 else f'[bold red]exit {report.gasworks_check_exit}[/]'}")
    for finding in report.findings[:20]:
        err.print(f"[red]finding[/] {finding}")
    if report.run_directory:
        out.print(f"databases and logs kept in {report.run_directory}")
    out.print(f"soak {'[bold green]passed[/]' if report.ok else '[bold red]FAILED[/]'} in {report.wall_s:.0f} s")
