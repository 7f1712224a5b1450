"""The `gasworks` command: serve the API, migrate, check the ledger, configure channels and keys."""

import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gasworks.domain.access import Role
from gasworks.domain.accounts import CustomerClass, MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.meter_security import DEFAULT_METER_MODEL
from gasworks.domain.money import fen_to_yuan_text
from gasworks.entrypoints.cli.broker_commands import register as register_broker
from gasworks.entrypoints.cli.carrier_commands import register as register_carriers
from gasworks.entrypoints.cli.channel_call_commands import register as register_channel_calls
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_actor, cli_errors, err, lazy_module, out, system
from gasworks.entrypoints.cli.delivery_commands import register as register_delivery
from gasworks.entrypoints.cli.province_commands import register as register_province
from gasworks.entrypoints.cli.reconcile_commands import register as register_reconciliation
from gasworks.entrypoints.cli.soak import soak

access, accounts = lazy_module("gasworks.services.access"), lazy_module("gasworks.services.accounts")
channels, checks = lazy_module("gasworks.services.channels"), lazy_module("gasworks.services.checks")

app = typer.Typer(help="gasworks: every yuan a resident pays becomes gas at their meter.", no_args_is_help=True)
db_app = typer.Typer(help="The system of record.", no_args_is_help=True)
channels_app = typer.Typer(help="Payment channels and their keys.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for operators, auditors and devices.", no_args_is_help=True)
accounts_app = typer.Typer(help="Customer accounts and meters.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(channels_app, name="channels")
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")


@app.command()
@cli_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (GASWORKS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (GASWORKS_PORT).")] = None,
    database_url: DatabaseUrl = None,
    worker: Annotated[bool, typer.Option(help="Run the delivery worker too: a thread in this process with one API process, a process of its own with more.")] = True,
    workers: Annotated[int, typer.Option("--workers", help="API processes (uvicorn workers); SQLite serialises their writes; PostgreSQL is what more processes are for.")] = 1,
) -> None:
    """Migrate the database to the latest schema and serve the HTTP API."""
    from gasworks.entrypoints.cli.serve import serve_api  # uvicorn and the database load when serving, not for --help

    serve_api(host=host, port=port, database_url=database_url, worker=worker, api_workers=workers)


@db_app.command("upgrade")
@cli_errors
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Apply every pending migration (safe to run again)."""
    from gasworks.adapters.db.migrate import current_revision

    sys_ = system(database_url)
    sys_.migrate()  # and any channel secret stored in the clear is sealed
    out.print(f"database at revision {current_revision(sys_.engine)}")


@app.command()
@cli_errors
def check(database_url: DatabaseUrl = None) -> None:
    """Prove the ledger's invariants; exit 1 if any is broken."""
    from gasworks.adapters.db.engine import require_current_schema

    sys_ = system(database_url)
    require_current_schema(sys_.engine)
    report = checks.check_ledger(sys_.new_uow())
    table = Table(title="ledger totals (sum of entries, fen)")
    table.add_column("account kind")
    table.add_column("sum fen", justify="right")
    for kind, total in sorted(report.totals_by_kind_fen.items()):
        table.add_row(kind, str(total))
    out.print(table)
    for state, (n, fen) in sorted(report.payments_by_state.items()):
        out.print(f"payments {state}: {n} (¥{fen_to_yuan_text(fen)})")
    accounts_owing, owed_fen = report.arrears
    out.print(f"accounts in arrears: {accounts_owing} (¥{fen_to_yuan_text(owed_fen)} owed, taken from their next payments)")
    if report.ok:
        out.print("[bold green]ledger holds[/]: every transaction balances, every balance equals its entries, every payment's state agrees with its money (booked once, reversed or refunded at most once)")
        return
    for f in report.findings:
        err.print(f"[red]{f.code}[/] {f.subject}: {f.detail}")
    raise typer.Exit(1)


def _read(path: Path | None) -> str | None:
    return path.read_text().strip() if path else None


@channels_app.command("add")
@cli_errors
def channels_add(
    channel_id: Annotated[str, typer.Argument(help="Short id, e.g. wechat, alipay, wo-wallet, kiosk.")],
    kind: Annotated[ChannelKind, typer.Option(help="How the channel talks to us.")],
    name: Annotated[str, typer.Option(help="Name people read.")],
    merchant_id: Annotated[str, typer.Option(help="WeChat mchid / Alipay app_id we expect.")] = "",
    key_id: Annotated[str, typer.Option(help="Platform key serial (WeChat) or key id (wallet, Alipay).")] = "key-1",
    public_key_file: Annotated[Path | None, typer.Option(help="The channel's RSA public key, PEM (wechatpay-v3, alipay).")] = None,
    apiv3_key_file: Annotated[Path | None, typer.Option(help="File with the 32-byte APIv3 key (wechatpay-v3).")] = None,
    hmac_secret_file: Annotated[Path | None, typer.Option(help="File with the shared secret (wallet-hmac).")] = None,
    generate_secret: Annotated[bool, typer.Option(help="Generate the wallet-hmac secret and print it once.")] = False,
    fee_ppm: Annotated[int, typer.Option(help="The channel's fee in parts per million (0.6 % = 6000), checked in reconciliation.")] = 0,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a payment channel with its first keys."""
    keys: list[tuple[KeyPurpose, str, str]] = []
    if (pem := _read(public_key_file)) is not None:
        keys.append((KeyPurpose.VERIFY_PUBLIC_KEY, key_id, pem + "\n"))
    if (apiv3 := _read(apiv3_key_file)) is not None:
        keys.append((KeyPurpose.APIV3_KEY, "apiv3-" + key_id, apiv3))
    secret = _read(hmac_secret_file) or (secrets.token_urlsafe(32) if generate_secret else None)
    if secret is not None:
        keys.append((KeyPurpose.HMAC_SECRET, key_id, secret))
    channel = channels.add_channel(channel_id=channel_id, kind=kind, name=name, merchant_id=merchant_id, keys=keys, uow=system(database_url).new_uow(), actor=cli_actor(), fee_ppm=fee_ppm)
    out.print(f"channel [bold]{channel.id}[/] ({channel.kind.value}) added with keys {[k for _, k, _ in keys]}")
    if generate_secret:
        out.print(f"shared secret for key {key_id} (shown once, give it to the channel): [bold]{secret}[/]")


@channels_app.command("add-key")
@cli_errors
def channels_add_key(
    channel_id: str,
    key_id: Annotated[str, typer.Option()],
    purpose: Annotated[KeyPurpose, typer.Option(help="verify (RSA public key PEM), hmac (shared secret) or apiv3.")],
    file: Annotated[Path, typer.Option(help="File holding the key material.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Start a key rollover: the new key is valid next to the old one until that is retired."""
    channels.add_key(channel_id=channel_id, purpose=purpose, key_id=key_id, material=file.read_text().strip() + ("\n" if purpose == KeyPurpose.VERIFY_PUBLIC_KEY else ""), uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"key {key_id} ({purpose.value}) active on {channel_id}")


@channels_app.command("retire-key")
@cli_errors
def channels_retire_key(channel_id: str, key_id: str, database_url: DatabaseUrl = None) -> None:
    """End a rollover: messages signed with this key are refused from now on."""
    channels.retire_key(channel_id=channel_id, key_id=key_id, uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"key {key_id} retired on {channel_id}")


@channels_app.command("seal-keys")
@cli_errors
def channels_seal_keys(database_url: DatabaseUrl = None) -> None:
    """Seal under the site key the channels' secret keys stored in the clear by an older gasworks (serve and db upgrade do it too)."""
    sealed = channels.seal_stored_keys(system(database_url).new_uow(), actor=cli_actor())
    out.print(f"{sealed} channel key(s) sealed under the site key" if sealed else "every channel secret is sealed already")


@channels_app.command("list")
@cli_errors
def channels_list(database_url: DatabaseUrl = None) -> None:
    found = channels.list_channels(system(database_url).new_uow())
    table = Table("id", "kind", "name", "merchant", "keys (id:purpose:status)")
    for c in found:
        table.add_row(c.id, c.kind.value, c.name, c.merchant_id, ", ".join(f"{k.key_id}:{k.purpose.value}:{k.status.value}" for k in c.keys))
    out.print(table)


@keys_app.command("add")
@cli_errors
def keys_add(
    role: Annotated[Role, typer.Option()],
    name: Annotated[str, typer.Option(help="Who or what holds it: a person, a kiosk id.")],
    channel: Annotated[str | None, typer.Option(help="For devices: the kiosk or counter channel.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key; the secret is printed once and only its hash is kept."""
    record, secret = access.create_api_key(name=name, role=role, channel_id=channel, uow=system(database_url).new_uow(), actor=cli_actor())
    out.print(f"{record.role} key {record.id} for {record.name}; send it as 'Authorization: Bearer <key>':")
    print(secret)


@keys_app.command("list")
@cli_errors
def keys_list(database_url: DatabaseUrl = None) -> None:
    found = access.list_api_keys(system(database_url).new_uow())
    table = Table("id", "name", "role", "channel", "created", "revoked")
    for k in found:
        table.add_row(k.id, k.name, k.role, k.channel_id or "", k.created_at.isoformat(timespec="seconds"), k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "")
    out.print(table)


@keys_app.command("revoke")
@cli_errors
def keys_revoke(key_id: str, database_url: DatabaseUrl = None) -> None:
    access.revoke_api_key(key_id, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"key {key_id} revoked")


@accounts_app.command("add")
@cli_errors
def accounts_add(
    account_no: str,
    name: Annotated[str, typer.Option()],
    phone: Annotated[str, typer.Option()],
    meter_serial: Annotated[str, typer.Option(help="14 digits (CJ/T 188 address).")],
    meter_kind: Annotated[MeterKind, typer.Option()],
    address: Annotated[str, typer.Option()] = "",
    community: Annotated[str, typer.Option()] = "",
    grid: Annotated[str, typer.Option()] = "",
    customer_class: Annotated[CustomerClass, typer.Option()] = CustomerClass.RESIDENTIAL,
    meter_model: Annotated[str, typer.Option(help="IoT meters: a meter model profile (`gasworks meters models list`): cjt188-sm4 (default), cjt188-aes, carrier-plain, cjt188-money, or one added.")] = DEFAULT_METER_MODEL,
    database_url: DatabaseUrl = None,
) -> None:
    """Open a customer account with its meter (an IoT meter gets its own key: `gasworks meters export-key`)."""
    customer = accounts.open_account(
        accounts.OpenAccount(account_no, name, address, community, grid, phone, meter_serial, meter_kind, customer_class, meter_model=meter_model),
        system(database_url).new_uow(),
        actor=cli_actor(),
    )
    out.print(f"account {customer.account_no} ({customer.masked_name}, {customer.masked_phone}) with {meter_kind.value} meter {meter_serial}")


@accounts_app.command("show")
@cli_errors
def accounts_show(account_no: str, database_url: DatabaseUrl = None) -> None:
    view = accounts.get_account(account_no, system(database_url).new_uow())
    c = view.customer
    out.print(f"{c.account_no} {c.masked_name} {c.masked_phone} {c.community} {c.address}")
    out.print(f"meter {c.meter.serial} ({c.meter.kind.value}, {c.meter.status.value}); balance ¥{fen_to_yuan_text(view.balance_fen)}")


register_delivery(app)
register_reconciliation(app)
register_broker(app)
register_carriers(app)
register_channel_calls(app, channels_app)
register_province(app)
app.command()(soak)
