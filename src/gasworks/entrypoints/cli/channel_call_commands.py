"""`gasworks channels gateway` and `gasworks statements fetch`: calling the channels by hand."""

from datetime import date
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gasworks.domain.errors import InvalidInput
from gasworks.domain.outbound import JobKind
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_actor, cli_errors, err, lazy_module, out, system
from gasworks.entrypoints.cli.reconcile_commands import show
from gasworks.services.channel_gateway import GatewayError

# The database, the gateways and DuckDB load when a command runs, not for --help.
outbound = lazy_module("gasworks.services.outbound")

statements_app = typer.Typer(help="Channels' daily statements, fetched from their APIs.", no_args_is_help=True)


def register(app: typer.Typer, channels_app: typer.Typer) -> None:
    channels_app.command("gateway")(channels_gateway)
    channels_app.command("jobs")(channels_jobs)
    app.add_typer(statements_app, name="statements")


@cli_errors
def channels_gateway(
    channel: Annotated[str, typer.Argument(help="The channel id.")],
    base_url: Annotated[str, typer.Option(help="The channel's API, e.g. https://api.mch.weixin.qq.com, or a local stub.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Where gasworks calls the channel (order queries, refunds, statements). Keys: `channels add-key --purpose sign`."""
    sys_ = system(database_url)
    outbound.configure_gateway(channel, base_url, uow=sys_.new_uow(), actor=cli_actor())
    ready = sys_.channel_gateway(channel) is not None
    out.print(f"{channel}: calls go to {base_url.rstrip('/')}" + ("" if ready else " [yellow](not callable yet: see the log line above for the missing key)[/]"))


@cli_errors
def channels_jobs(
    kind: Annotated[JobKind, typer.Option(help="order_query, refund or statement.")] = JobKind.STATEMENT,
    channel: str | None = None,
    limit: int = 50,
    database_url: DatabaseUrl = None,
) -> None:
    """What the worker last did when calling the channels: tries, next try, the channel's last answer."""
    jobs = outbound.list_jobs(kind, system(database_url).new_uow(), channel_id=channel, limit=min(limit, 500))
    table = Table("subject", "channel", "state", "tries", "next try", "step", "last")
    for j in jobs:
        table.add_row(j.subject, j.channel_id, j.state.value, str(j.tries), j.next_try_at.isoformat(timespec="seconds"), j.step, j.last_outcome)
    out.print(table)


@statements_app.command("fetch")
@cli_errors
def statements_fetch(
    channel: Annotated[str, typer.Option(help="The channel id, e.g. wechat.")],
    day: Annotated[str, typer.Option("--date", help="The business day (Beijing time), YYYY-MM-DD.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Fetch a day's statement from the channel's API, check it, import it (once) and reconcile it.
    Exit 1 if something is held for an operator, 2 if the channel gave no trustworthy file."""
    try:
        statement_date = date.fromisoformat(day)
    except ValueError:
        raise InvalidInput(f"--date {day!r} is not YYYY-MM-DD", code="INVALID_DATE") from None
    sys_ = system(database_url)
    gateway = sys_.channel_gateway(channel)
    if gateway is None:
        raise InvalidInput(f"{channel} has no gateway configured: gasworks channels gateway {channel} --base-url … (and its signing key)", code="GATEWAY_NOT_CONFIGURED")
    try:
        fetched = outbound.fetch_statement(channel, statement_date, gateway, sys_.new_uow, actor=cli_actor(), timezone=sys_.settings.local_timezone)
    except GatewayError as error:
        err.print(f"[bold red]error[/] {error.code}: {escape(error.message)}")
        raise typer.Exit(2) from None
    out.print(f"{channel} {statement_date}: {fetched.lines:,} lines {'imported' if fetched.new else 'already imported'} ({fetched.checked})")
    show(fetched.report)
    if fetched.report.verdict == "unclean":
        raise typer.Exit(1)
