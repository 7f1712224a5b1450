"""`gasworks reconcile`, `gasworks discrepancies` and `gasworks holds`: money decisions."""

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gasworks.domain.errors import InvalidInput
from gasworks.domain.holds import HoldDecision
from gasworks.domain.money import fen_to_yuan_text
from gasworks.domain.statements import DiscrepancyClass, DiscrepancyState
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_actor, cli_errors, lazy_module, out, system

if TYPE_CHECKING:
    from gasworks.services.reconciliation import RunReport

reconciliation, holds = lazy_module("gasworks.services.reconciliation"), lazy_module("gasworks.services.holds")

discrepancies_app = typer.Typer(help="Differences found by reconciliation: list them, decide them.", no_args_is_help=True)
holds_app = typer.Typer(help="Payments held in suspense: list them, credit or refund them.", no_args_is_help=True)
refunds_app = typer.Typer(help="Refunds the channel made: confirm one we requested, or record one it made on its own.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(reconcile)
    app.add_typer(discrepancies_app, name="discrepancies")
    app.add_typer(holds_app, name="holds")
    app.add_typer(refunds_app, name="refunds")


@refunds_app.command("list")
@cli_errors
def refunds_list(limit: int = 100, database_url: DatabaseUrl = None) -> None:
    """Refunds requested and not yet confirmed by the channel: their money is in refunds in flight."""
    waiting = holds.refunds_requested(limit, system(database_url).new_uow())
    table = Table("payment", "channel", "txn", "amount", "requested")
    for p in waiting:
        table.add_row(p.id, p.channel_id, p.channel_txn_id, f"¥{fen_to_yuan_text(p.amount_fen)}", p.events[-1].note)
    out.print(table)


@refunds_app.command("confirm")
@cli_errors
def refunds_confirm(payment_id: str, evidence: Annotated[str, typer.Option(help="The channel's refund id or notification.")], database_url: DatabaseUrl = None) -> None:
    """The channel paid back a refund we requested."""
    done = holds.confirm_refund(payment_id, evidence=evidence, uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"payment {done.id}: {done.events[-1].note}")


@refunds_app.command("external")
@cli_errors
def refunds_external(payment_id: str, evidence: Annotated[str, typer.Option(help="Where the refund was seen.")], database_url: DatabaseUrl = None) -> None:
    """The channel refunded this payment on its own."""
    done = holds.record_external_refund(payment_id, evidence=evidence, uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"payment {done.id}: {done.events[-1].note}")


@holds_app.command("list")
@cli_errors
def holds_list(limit: int = 100, database_url: DatabaseUrl = None) -> None:
    held = holds.held_payments(limit, system(database_url).new_uow())
    table = Table("payment", "channel", "txn", "amount", "account", "reason")
    for p in held:
        table.add_row(p.id, p.channel_id, p.channel_txn_id, f"¥{fen_to_yuan_text(p.amount_fen)}", p.account_no or "", p.events[-1].note)
    out.print(table)


@holds_app.command("decide")
@cli_errors
def holds_decide(
    payment_id: str,
    decision: HoldDecision,
    reason: Annotated[str, typer.Option()],
    account_no: Annotated[str | None, typer.Option(help="For credit: the account the money belongs to.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Credit a held payment to an account (it then buys gas) or refund it through its channel."""
    decided = holds.decide_hold(payment_id, decision, reason=reason, account_no=account_no, uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"payment {decided.id}: {decided.events[-1].note}")


@cli_errors
def reconcile(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The channel's statement file for the day.")],
    channel: Annotated[str, typer.Option(help="The channel id, e.g. wechat.")],
    day: Annotated[str, typer.Option("--date", help="The day the statement covers, YYYY-MM-DD.")],
    format_: Annotated[str | None, typer.Option("--format", help="wechat-trade-bill, alipay-business-bill or plain-csv; default by channel kind.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the discrepancies to this CSV file.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Import a day's statement (whole, once) and reconcile it three ways. Exit 1 if something is held for an operator."""
    try:
        statement_date = date.fromisoformat(day)
    except ValueError:
        raise InvalidInput(f"--date {day!r} is not YYYY-MM-DD", code="INVALID_DATE") from None
    sys_ = system(database_url)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out, transient=True) as progress:
        task = progress.add_task(f"reading {file.name}")
        imported = reconciliation.import_statement(channel_id=channel, statement_date=statement_date, filename=file.name, raw=file.read_bytes(), uow=sys_.new_uow(), actor=cli_actor(), format_=format_)
        progress.update(task, description=f"{imported.lines:,} lines {'imported' if imported.new else 'already imported'}")
        report = reconciliation.reconcile(
            file_id=imported.file_id, uow_factory=sys_.new_uow, actor=cli_actor(), timezone=sys_.settings.local_timezone,
            progress=lambda stage: progress.update(task, description=stage),
        )  # fmt: skip
    show(report)
    if csv_out is not None:
        csv_out.write_text(reconciliation.report_csv(report), encoding="utf-8")
        out.print(f"discrepancies written to {csv_out}")
    if report.verdict == "unclean":
        raise typer.Exit(1)


def show(report: "RunReport") -> None:
    again = "" if report.new else " (reconciled before: the first run's report)"
    out.print(f"reconciliation {report.run_id}: {report.channel_id} {report.statement_date}{again}; {report.matched:,} payments matched")
    table = Table("class", "count", "amount")
    for klass, total in sorted(report.totals.items()):
        table.add_row(klass, f"{total['count']:,}", f"¥{fen_to_yuan_text(total['amount_fen'])}")
    out.print(table)
    held = [d for d in report.discrepancies if d.state == DiscrepancyState.OPEN]
    for d in held[:20]:
        out.print(f"  #{d.id} {d.klass.value} {d.channel_txn_id or ''} {d.payment_id or ''}: {d.detail} → {d.proposed_action}")
    if len(held) > 20:
        out.print(f"  … and {len(held) - 20:,} more (gasworks discrepancies list, or --csv)")
    colour = {"clean": "green", "repaired": "yellow", "unclean": "red"}[report.verdict]
    out.print(f"verdict: [bold {colour}]{report.verdict}[/]")


@discrepancies_app.command("list")
@cli_errors
def discrepancies_list(
    state: Annotated[DiscrepancyState | None, typer.Option()] = DiscrepancyState.OPEN,
    klass: Annotated[DiscrepancyClass | None, typer.Option("--class")] = None,
    channel: str | None = None,
    limit: int = 100,
    database_url: DatabaseUrl = None,
) -> None:
    found = reconciliation.list_discrepancies(system(database_url).new_uow(), state=state, klass=klass, channel_id=channel, limit=limit)
    table = Table("id", "run", "class", "state", "channel", "txn", "payment", "detail", "proposed")
    for d in found:
        table.add_row(str(d.id), str(d.run_id), d.klass.value, d.state.value, d.channel_id, d.channel_txn_id or "", d.payment_id or "", d.detail, d.proposed_action)
    out.print(table)


@discrepancies_app.command("decide")
@cli_errors
def discrepancies_decide(
    discrepancy_id: int,
    decision: Annotated[str, typer.Argument(help="reverse, adjust or accept")],
    reason: Annotated[str, typer.Option()],
    database_url: DatabaseUrl = None,
) -> None:
    """Decide a held discrepancy: money moves as a ledger transaction; the decision is audited."""
    decided = reconciliation.decide(discrepancy_id, decision, reason, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"discrepancy {decided.id}: {decided.resolution}")
