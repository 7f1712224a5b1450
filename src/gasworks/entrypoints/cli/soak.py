"""`gasworks soak`: real gasworks processes under chaos, and the proof that nothing was lost."""

import time
from pathlib import Path
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
    kill_primary: Annotated[bool, typer.Option(help="Instead of the chaos rounds: the primary-kill drill on the pg_auto_failover formation of scripts/pg-failover (its `up` prints --database-url).")] = False,
    database_url: Annotated[str | None, typer.Option(help="With --kill-primary: the formation's multi-host URL.")] = None,
    failover_scripts: Annotated[Path, typer.Option(help="With --kill-primary: where kill-primary and start-node are.")] = Path("scripts/pg-failover"),
    kill_broker_node: Annotated[int | None, typer.Option(min=1, max=3, help="Instead of the chaos rounds: the broker-node-kill drill on the NATS cluster of scripts/nats-cluster; kills this node.")] = None,
    uplink_queue_urls: Annotated[str | None, typer.Option(help="With --kill-broker-node: the cluster's nats:// URLs, comma-separated.")] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="With --kill-broker-node: the cluster's MQTT gateways, mqtt://h:p1,h:p2,h:p3.")] = None,
    nats_scripts: Annotated[Path, typer.Option(help="With --kill-broker-node: where kill-node is.")] = Path("scripts/nats-cluster"),
) -> None:
    """Run real `gasworks serve` and workers on a private PostgreSQL and Mosquitto, kill and restart
    them at random, harm and forge messages, and prove the invariants after every fault.
    With --kill-primary, kill the primary of a failing-over PostgreSQL under load and prove every
    acknowledged payment booked once."""
    if kill_broker_node is not None:
        drill_broker(kill_broker_node, database_url, uplink_queue_urls, mqtt_url, nats_scripts, minutes=minutes, payments_per_minute=payments_per_minute, households=households)
        return
    if kill_primary:
        drill_failover(database_url, failover_scripts, minutes=minutes, payments_per_minute=payments_per_minute, households=households)
        return
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


def drill_failover(database_url: str | None, scripts: Path, *, minutes: int, payments_per_minute: int, households: int) -> None:
    from gasworks.observability import configure_logging
    from gasworks.sim.failover_drill import DrillOptions, FailoverDrill

    if database_url is None:
        raise typer.BadParameter("--kill-primary needs --database-url: the multi-host URL scripts/pg-failover/up prints", param_hint="--database-url")
    if not (scripts / "kill-primary").exists():
        raise typer.BadParameter(f"no kill-primary script in {scripts}", param_hint="--failover-scripts")
    configure_logging(level=40)
    run_s = minutes * 60
    options = DrillOptions(database_url, scripts, households=min(households, 1000), payments_per_s=max(1, payments_per_minute // 60), before_kill_s=min(10.0, run_s / 4), after_kill_s=run_s - min(10.0, run_s / 4))
    started = time.monotonic()
    report = FailoverDrill(options, say=lambda line: out.print(f"  {time.monotonic() - started:5.1f} s  {line}")).run()
    seconds = lambda s: "-" if s is None else f"{s:.1f} s"  # noqa: E731
    rows = (
        ("killed (node, port)", report.killed),
        ("payments sent", f"{report.payments_sent:,}"),
        ("acknowledged to the channel", f"{report.acknowledged:,}"),
        ("booked", f"{report.booked:,}"),
        ("lost (acknowledged, not booked)", f"{len(report.lost):,}"),
        ("doubled", f"{len(report.doubled):,}"),
        ("never answered", f"{report.unanswered:,}"),
        ("kill → first booking after it", seconds(report.failover_s)),
        ("time without service", seconds(report.service_gap_s)),
        ("attempts refused meanwhile", ", ".join(f"{n:,} × {status}" for status, n in sorted(report.refused_by_status.items())) or "0"),
        ("`gasworks check`", "passed" if report.gasworks_check_exit == 0 else f"exit {report.gasworks_check_exit}"),
    )
    show_drill("primary killed under load (pg_auto_failover)", rows, ok=report.ok, wall_s=report.wall_s)


def drill_broker(node: int, database_url: str | None, uplink_queue_urls: str | None, mqtt_url: str | None, scripts: Path, *, minutes: int, payments_per_minute: int, households: int) -> None:
    from gasworks.observability import configure_logging
    from gasworks.sim.broker_drill import BrokerDrill, BrokerDrillOptions

    for value, name in ((database_url, "--database-url"), (uplink_queue_urls, "--uplink-queue-urls"), (mqtt_url, "--mqtt-url")):
        if not value:
            raise typer.BadParameter(f"--kill-broker-node needs {name} (scripts/nats-cluster/up prints the cluster's URLs)", param_hint=name)
    if not (scripts / "kill-node").exists():
        raise typer.BadParameter(f"no kill-node script in {scripts}", param_hint="--nats-scripts")
    assert database_url and uplink_queue_urls and mqtt_url
    configure_logging(level=40)
    run_s = minutes * 60
    before_s = min(10.0, run_s / 4)
    options = BrokerDrillOptions(database_url, uplink_queue_urls, mqtt_url, scripts, households=min(households, 1000), payments_per_s=max(1, payments_per_minute // 60), before_kill_s=before_s, after_kill_s=run_s - before_s, kill_node=node)
    started = time.monotonic()
    report = BrokerDrill(options, say=lambda line: out.print(f"  {time.monotonic() - started:5.1f} s  {line}")).run()
    rows = (
        ("killed", report.killed),
        ("payments booked", f"{report.payments_booked:,}"),
        ("purchases applied at meters", f"{report.purchases_applied:,}"),
        ("meters with a purchase lost", f"{len(report.lost):,}"),
        ("meters with a purchase applied twice", f"{len(report.applied_twice):,}"),
        ("kill → first downlink at a meter", "-" if report.kill_to_first_downlink_s is None else f"{report.kill_to_first_downlink_s:.1f} s"),
        ("longest time with no downlink, around the kill", f"{report.longest_gap_s:.1f} s"),
        ("`gasworks check` (ledger)", "passed" if report.ledger_ok else "FAILED"),
    )
    show_drill("a NATS node killed under load (JetStream work queue, MQTT meters)", rows, ok=report.ok, wall_s=report.wall_s)


def show_drill(title: str, rows: tuple[tuple[str, str], ...], *, ok: bool, wall_s: float) -> None:
    """A drill's measures as one table and its verdict; exit 1 when it failed."""
    table = Table(title=title, title_justify="left")
    table.add_column("measure", no_wrap=True)
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(f"drill {'[bold green]passed[/]' if ok else '[bold red]FAILED[/]'} in {wall_s:.0f} s")
    if not ok:
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
