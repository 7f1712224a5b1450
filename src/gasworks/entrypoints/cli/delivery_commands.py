"""`gasworks worker`, `tariffs`, `kiosks`, `meters`, `commands` and `alerts`."""

import os
import signal
import threading
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from gasworks.domain.accounts import CustomerClass
from gasworks.domain.delivery import CommandState, MeterModel, valve_reason_names
from gasworks.domain.errors import InvalidInput
from gasworks.domain.kiosks import Kiosk, KioskStatus
from gasworks.domain.meter_models import CreditUnit, DiByteOrder, MacScheme, parse_profile_value
from gasworks.domain.meter_security import DEFAULT_METER_MODEL
from gasworks.domain.tariffs import milli_fen_to_price_text
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_actor, cli_errors, lazy_module, out, system

delivery, kiosks = lazy_module("gasworks.services.delivery"), lazy_module("gasworks.services.kiosks")
meter_keys, tariffs = lazy_module("gasworks.services.meter_keys"), lazy_module("gasworks.services.tariffs")

tariffs_app = typer.Typer(help="Tiered tariffs: versions with effective dates, per customer class.", no_args_is_help=True)
kiosks_app = typer.Typer(help="Kiosks and counters where card meters' purchases are written.", no_args_is_help=True)
meters_app = typer.Typer(help="Meters' delivery state and keys.", no_args_is_help=True)
commands_app = typer.Typer(help="Meter commands (credit orders, valve): list, reissue, cancel.", no_args_is_help=True)
models_app = typer.Typer(help="Meter models: purchase serial width, whether the valve needs the resident's button.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: list them (each says what clears it), resolve the ones a person must.", invoke_without_command=True)


def register(app: typer.Typer) -> None:
    from gasworks.entrypoints.cli.demo import demo

    app.command()(demo)
    app.command()(worker)
    alerts_app.callback()(alerts)
    alerts_app.command("resolve")(alerts_resolve)
    app.add_typer(alerts_app, name="alerts")
    meters_app.add_typer(models_app, name="models")
    app.add_typer(tariffs_app, name="tariffs")
    app.add_typer(kiosks_app, name="kiosks")
    app.add_typer(meters_app, name="meters")
    app.add_typer(commands_app, name="commands")


@cli_errors
def worker(
    database_url: DatabaseUrl = None,
    mqtt_url: Annotated[str | None, typer.Option(help="Overrides GASWORKS_MQTT_URL.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics here; 0 for none (GASWORKS_WORKER_METRICS_PORT).")] = None,
    watchdog_interval_s: Annotated[int | None, typer.Option(help="Seconds between watchdog passes (GASWORKS_WATCHDOG_INTERVAL_S).")] = None,
    processes: Annotated[int | None, typer.Option(help="Worker processes to run, sharing the work (PostgreSQL only; GASWORKS_WORKER_PROCESSES).")] = None,
) -> None:
    """Deliver purchases to IoT meters over MQTT and watch every delivery (runs until stopped)."""
    from prometheus_client import start_http_server

    from gasworks.entrypoints.workers.processes import PROCESSES_MAX, WorkerProcesses
    from gasworks.entrypoints.workers.worker import Worker

    sys_ = system(database_url, mqtt_url=mqtt_url, worker_metrics_port=metrics_port, watchdog_interval_s=watchdog_interval_s, worker_processes=processes)
    settings = sys_.settings
    if not 1 <= settings.worker_processes < PROCESSES_MAX:
        raise InvalidInput(f"--processes is 1 to {PROCESSES_MAX - 1}", code="INVALID_WORKER_OPTION")
    if settings.worker_processes > 1 and sys_.engine.url.get_backend_name() != "postgresql":
        raise InvalidInput("SQLite has one writer: run one worker (several need PostgreSQL)", code="ONE_WORKER_ON_SQLITE")
    if not settings.mqtt_url and not settings.uplink_queue_urls:
        raise InvalidInput(
            "no broker configured (GASWORKS_MQTT_URL or --mqtt-url, or GASWORKS_UPLINK_QUEUE_URLS for NATS); with the in-process transport the worker runs inside `gasworks serve`",
            code="NO_BROKER",
        )
    if not 0 <= settings.worker_metrics_port < 65536 or settings.watchdog_interval_s < 1:
        raise InvalidInput("metrics port must be 0-65535 and the watchdog interval at least 1 s", code="INVALID_WORKER_OPTION")
    try:
        transport = sys_.meter_transport()
    except ValueError as error:  # a malformed URL, reconnect delays out of order
        raise InvalidInput(str(error), code="INVALID_MQTT_SETTING") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = Worker(sys_, transport)  # refuses first if a meter model's MAC scheme cannot be computed here
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as error:
            raise InvalidInput(
                f"cannot serve metrics on {settings.worker_metrics_host}:{settings.worker_metrics_port} ({error.strerror}); "
                "give each worker on a host its own --metrics-port", code="METRICS_PORT_UNAVAILABLE",
            ) from None  # fmt: skip
    metrics = f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}/metrics" if settings.worker_metrics_port else "off"
    broker = f"NATS {settings.uplink_queue_urls}" if settings.uplink_queue_urls else str(settings.mqtt_url).split("@")[-1]
    out.print(f"worker on {sys_.engine.url.render_as_string(hide_password=True)}, broker {broker}; Ctrl-C stops")
    out.print(f"  metrics: {metrics}; watchdog every {settings.watchdog_interval_s} s")
    others = WorkerProcesses(settings, settings.worker_processes - 1)
    if others.count:
        out.print(f"  {settings.worker_processes} worker processes: this one and {others.count} more, sharing meters and uplinks")
    others.start()
    try:
        worker.run(stop)
    finally:
        others.stop()


@cli_errors
def alerts(
    ctx: typer.Context, database_url: DatabaseUrl = None, all_: Annotated[bool, typer.Option("--all", help="Cleared ones too.")] = False, limit: int = 100,
) -> None:  # fmt: skip
    """Open alerts: late or stuck purchases, offline meters, alarms, claims beyond what was issued."""
    if ctx.invoked_subcommand is not None:
        return
    found = delivery.list_alerts(system(database_url).new_uow(), limit=limit, open_only=not all_)
    table = Table("id", "raised (UTC)", "kind", "subject", "reason", "cleared by", "cleared")
    for a in found:
        cleared = f"{a.cleared_at.isoformat(timespec='seconds')}{f' by {a.resolved_by}: {a.resolution}' if a.resolved_by else ''}" if a.cleared_at else ""
        table.add_row(str(a.id), a.raised_at.isoformat(timespec="seconds"), a.kind, a.subject, a.reason, a.cleared_by, cleared)
    out.print(table)


@cli_errors
def alerts_resolve(alert_id: int, note: Annotated[str, typer.Option(help="What was found and done (audited).")], database_url: DatabaseUrl = None) -> None:
    """Record a person's resolution of an alert only a person can clear."""
    alert = delivery.resolve_alert(alert_id, system(database_url).new_uow(), actor=cli_actor(), note=note)
    out.print(f"alert {alert.id} ({alert.kind} {alert.subject}) resolved")


@tariffs_app.command("add")
@cli_errors
def tariffs_add(
    customer_class: Annotated[CustomerClass, typer.Argument()],
    effective_from: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    tier: Annotated[list[str], typer.Option(help="UPTO_M3:PRICE per tier, '-' for the last, e.g. --tier 390:2.832 --tier 600:3.398 --tier -:4.248")],
    year_start: Annotated[str, typer.Option(help="MM-DD the tier year starts")] = "01-01",
    database_url: DatabaseUrl = None,
) -> None:
    """Add a tariff version (versions are never edited)."""
    try:
        day = date.fromisoformat(effective_from)
        month, day_of_month = (int(x) for x in year_start.split("-"))
        parsed = [(None if upto == "-" else int(upto), price) for upto, price in (t.split(":", 1) for t in tier)]
    except ValueError as error:
        raise InvalidInput(f"cannot read the tariff: {error} (see --help)", code="INVALID_TARIFF") from None
    added = tariffs.add_tariff(
        customer_class=customer_class, effective_from=day, tiers=parsed, year_start_month=month, year_start_day=day_of_month,
        uow=system(database_url).new_uow(), actor=cli_actor(),
    )  # fmt: skip
    out.print(f"tariff {added.id}: {customer_class.value} from {day}")


@tariffs_app.command("list")
@cli_errors
def tariffs_list(database_url: DatabaseUrl = None) -> None:
    table = Table("id", "class", "from", "tiers (up to m³ @ ¥/m³)", "year starts")
    for t in tariffs.list_tariffs(system(database_url).new_uow()):
        tiers = ", ".join(f"{'∞' if x.upto_litres is None else x.upto_litres // 1000} @ {milli_fen_to_price_text(x.price_milli_fen_per_m3)}" for x in t.tiers)
        table.add_row(str(t.id), t.customer_class.value, t.effective_from.isoformat(), tiers, f"{t.year_start_month:02d}-{t.year_start_day:02d}")
    out.print(table)


@kiosks_app.command("add")
@cli_errors
def kiosks_add(
    kiosk_id: str,
    name: Annotated[str, typer.Option()],
    channel: Annotated[str, typer.Option(help="The kiosk or counter channel it takes payments on.")],
    latitude: Annotated[float, typer.Option()],
    longitude: Annotated[float, typer.Option()],
    community: Annotated[str, typer.Option()] = "",
    address: Annotated[str, typer.Option()] = "",
    opening_hours: Annotated[str, typer.Option(help='Shown to residents beside the distance: "07:00-22:00" or "24h".')] = "",
    database_url: DatabaseUrl = None,
) -> None:
    kiosk = Kiosk(kiosk_id, name, channel, community, address, latitude, longitude, KioskStatus.WORKING.value, opening_hours)
    kiosks.add_kiosk(kiosk, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"kiosk {kiosk_id} added")


@kiosks_app.command("status")
@cli_errors
def kiosks_status(kiosk_id: str, status: KioskStatus, database_url: DatabaseUrl = None) -> None:
    kiosks.set_kiosk_status(kiosk_id, status, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"kiosk {kiosk_id} is {status.value}")


@kiosks_app.command("list")
@cli_errors
def kiosks_list(database_url: DatabaseUrl = None) -> None:
    found = kiosks.list_kiosks(system(database_url).new_uow())
    table = Table("id", "name", "community", "lat, lon", "status", "hours")
    for k in found:
        table.add_row(k.id, k.name, k.community, f"{k.latitude:.5f}, {k.longitude:.5f}", k.status, k.opening_hours or "-")
    out.print(table)


@meters_app.command("show")
@cli_errors
def meters_show(serial: str, database_url: DatabaseUrl = None) -> None:
    """A meter's link, serials and open commands."""
    meter = delivery.get_meter(serial, system(database_url).new_uow())
    link, commands = meter.link, meter.commands
    out.print(f"meter {link.serial} ({link.kind.value}) account {link.account_no}: {link.link_state.value}, last report {link.last_report_at or 'never'}")
    out.print(f"purchases issued #{link.purchase_seq_issued}, applied #{link.applied_seq}; credit {link.credit_litres} L; valve {'open' if link.valve_open else 'closed' if link.valve_open is False else '?'}")
    reasons = ", ".join(valve_reason_names(link.valve_reasons)) or "none"
    out.print(f"model {link.model or '-'}; valve kept closed for: {reasons}; reopening needs the resident's button: {'yes' if link.reopen_needs_button else 'no'}")
    _commands_table(commands)


def _print_key(key: "meter_keys.MeterKey", out_file: Path | None) -> None:
    text = f"{key.serial} {key.model} {key.scheme.value} v{key.key_version} {key.key.hex()}\n"
    if out_file is None:
        out.print(f"key version {key.key_version} of meter {key.serial} ({key.scheme.value}), for writing into the meter; keep it secret:")
        out.print(key.key.hex(), highlight=False, soft_wrap=True)
        return
    with os.fdopen(os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    out.print(f"key version {key.key_version} of meter {key.serial} ({key.scheme.value}) written to {out_file} (mode 600)")


KeyFile = Annotated[Path | None, typer.Option("--out", help="Write the key to this new file (mode 600) instead of the terminal.")]


@meters_app.command("keys")
@cli_errors
def meters_keys(serial: str, database_url: DatabaseUrl = None) -> None:
    """A meter's model, MAC scheme, key versions and frame counters (never the key)."""
    status = meter_keys.key_status(serial, system(database_url).new_uow())
    rotating = f", rotating to v{status.pending_key_version} (both taken until the meter uses it)" if status.pending_key_version else ""
    out.print(f"meter {status.serial}: model {status.model} ({status.scheme.value}), key v{status.active_key_version}{rotating}")
    out.print(f"frame counters: last uplink taken {status.uplink_counter_seen}, last downlink sent {status.downlink_counter_sent}")


@meters_app.command("export-key")
@cli_errors
def meters_export_key(serial: str, out_file: KeyFile = None, database_url: DatabaseUrl = None) -> None:
    """The key the meter should hold (the new one during a rotation), for the installer's tool. Audited."""
    _print_key(meter_keys.export_key(serial, system(database_url).new_uow(), actor=cli_actor()), out_file)


@meters_app.command("rotate-key")
@cli_errors
def meters_rotate_key(
    serial: str,
    out_file: KeyFile = None,
    model: Annotated[str | None, typer.Option(help=f"Only for a meter that has no key yet: its model (default: the one it has, else {DEFAULT_METER_MODEL}).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a new key version; old and new are both taken until the meter is heard under the new one."""
    _print_key(meter_keys.rotate_key(serial, system(database_url).new_uow(), actor=cli_actor(), model=model), out_file)
    out.print("write it into the meter; its first frame under the new version retires the old one (or `gasworks meters finish-rotation`)")


@meters_app.command("finish-rotation")
@cli_errors
def meters_finish_rotation(serial: str, database_url: DatabaseUrl = None) -> None:
    """The meter holds the new key (confirmed on site): refuse the old version from now on."""
    version = meter_keys.finish_rotation(serial, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"meter {serial}: key v{version} active, older versions refused")


@meters_app.command("set")
@cli_errors
def meters_set(
    serial: str,
    model: Annotated[str | None, typer.Option(help="The meter's model (see `gasworks meters models`); its button setting comes with it.")] = None,
    reopen_needs_button: Annotated[bool | None, typer.Option("--reopen-needs-button/--no-reopen-needs-button", help="The resident presses the meter's button to reopen the valve.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a meter's model and whether its valve needs the resident's button to reopen."""
    link = delivery.set_meter(serial, system(database_url).new_uow(), actor=cli_actor(), model=model, reopen_needs_button=reopen_needs_button)
    out.print(f"meter {link.serial}: model {link.model or '-'}, reopening needs the button: {'yes' if link.reopen_needs_button else 'no'}")


@meters_app.command("close-valve")
@cli_errors
def meters_close_valve(
    serial: str,
    reason: Annotated[str, typer.Option(help="arrears, hazard_stop or operator")],
    note: Annotated[str, typer.Option(help="Why, in words (audited).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Close a meter's valve; it reopens only when every reason is cleared."""
    link = delivery.close_valve(serial, reason, system(database_url).new_uow(), actor=cli_actor(), note=note)
    out.print(f"meter {link.serial}: valve kept closed for {', '.join(valve_reason_names(link.valve_reasons))}")


@meters_app.command("resolve")
@cli_errors
def meters_resolve(
    serial: str,
    reason: Annotated[str, typer.Option(help="leak_or_tamper or hazard_stop (a technician's resolution), arrears or operator")],
    note: Annotated[str, typer.Option(help="What the technician found and did (audited).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Record the resolution of one reason a meter's valve is closed; it reopens when none is left."""
    link = delivery.resolve_valve_reason(serial, reason, system(database_url).new_uow(), actor=cli_actor(), note=note)
    out.print(f"meter {link.serial}: valve kept closed for {', '.join(valve_reason_names(link.valve_reasons)) or 'nothing any more'}")


@models_app.command("add")
@cli_errors
def models_add(
    name: str,
    serial_bytes: Annotated[int, typer.Option(help="1: the purchase serial is one byte and wraps at 255; 4: BCD, no wrap.")] = 4,
    reopen_needs_button: Annotated[bool, typer.Option(help="The resident presses the meter's button to reopen the valve.")] = False,
    mac_scheme: Annotated[str, typer.Option(help="How its frames are sealed: sm4-cmac, aes128-cmac, none (carrier platform only).")] = "sm4-cmac",
    di_byte_order: Annotated[str, typer.Option(help="low-first: 0x901F sent 1F 90 (CJ/T 188); high-first: sent 90 1F.")] = "low-first",
    credit_unit: Annotated[str, typer.Option(help="litres: a volume meter; fen: a money meter (purchase and balance in BCD yuan).")] = "litres",
    report_interval_s: Annotated[int, typer.Option(help="How often it wakes and reports by itself, in seconds.")] = 86_400,
    description: Annotated[str, typer.Option(help="For people: vendor, type, where it is installed.")] = "",
    database_url: DatabaseUrl = None,
) -> None:
    """Add a meter model profile (its firmware's dialect); `gasworks accounts add --meter-model NAME` then uses it."""
    model = MeterModel(
        name,
        serial_bytes,
        reopen_needs_button,
        mac_scheme=parse_profile_value(MacScheme, mac_scheme),  # type: ignore[arg-type]
        di_byte_order=parse_profile_value(DiByteOrder, di_byte_order),  # type: ignore[arg-type]
        credit_unit=parse_profile_value(CreditUnit, credit_unit),  # type: ignore[arg-type]
        report_interval_s=report_interval_s,
        description=description,
    )
    delivery.add_meter_model(model, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"meter model {model.name} added")


@models_app.command("set")
@cli_errors
def models_set(
    name: str,
    reopen_needs_button: Annotated[bool, typer.Option("--reopen-needs-button/--no-reopen-needs-button", help="Every meter of the model follows.")],
    database_url: DatabaseUrl = None,
) -> None:
    changed = delivery.set_model_reopen_needs_button(name, reopen_needs_button, system(database_url).new_uow(), actor=cli_actor())
    out.print(f"meter model {name}: reopening needs the button: {'yes' if reopen_needs_button else 'no'} ({changed} meters)")


@models_app.command("list")
@cli_errors
def models_list(database_url: DatabaseUrl = None) -> None:
    """Every meter model profile, with how many meters use it."""
    found, meters = delivery.meter_models_in_use(system(database_url).new_uow())
    table = Table("MAC", "DI order", "unit", "serial bytes", "reports every", "reopen needs button", "meters", "description")
    # The name is what an operator types next: never cut, however narrow the terminal.
    table.columns.insert(0, Column("model", no_wrap=True, min_width=max((len(m.name) for m in found), default=5)))
    for m in found:
        table.add_row(
            m.name, m.mac_scheme.value, m.di_byte_order.value, m.credit_unit.value, str(m.purchase_seq_bytes), f"{m.report_interval_s} s",
            "yes" if m.reopen_needs_button else "no", str(meters.get(m.name, 0)), m.description,
        )  # fmt: skip
    out.print(table)


def _commands_table(commands: list) -> None:
    table = Table("id", "meter", "kind", "serial", "litres", "fen", "state", "sends", "note")
    for c in commands:
        table.add_row(str(c.id), c.meter_serial, c.kind.value, str(c.purchase_seq or ""), str(c.volume_litres or ""), str(c.cost_fen or ""), c.state.value, str(c.sends), c.note)
    out.print(table)


@commands_app.command("list")
@cli_errors
def commands_list(
    state: Annotated[list[CommandState] | None, typer.Option(help="Repeat for several, e.g. --state failed --state expired.")] = None,
    meter: str | None = None,
    limit: int = 100,
    database_url: DatabaseUrl = None,
) -> None:
    _commands_table(delivery.list_commands(system(database_url).new_uow(), limit=limit, states=state or None, serial=meter))


@commands_app.command("reissue")
@cli_errors
def commands_reissue(command_id: int, reason: Annotated[str, typer.Option()], database_url: DatabaseUrl = None) -> None:
    """Send a failed or expired command again (with a fresh time to live)."""
    command = delivery.reissue_command(command_id, system(database_url).new_uow(), actor=cli_actor(), reason=reason)
    out.print(f"command {command.id} is {command.state.value} again")


@commands_app.command("cancel")
@cli_errors
def commands_cancel(command_id: int, reason: Annotated[str, typer.Option()], database_url: DatabaseUrl = None) -> None:
    """Cancel a valve command. Credit orders cannot be cancelled: later purchase serials depend on them."""
    command = delivery.cancel_command(command_id, system(database_url).new_uow(), actor=cli_actor(), reason=reason)
    out.print(f"command {command.id} cancelled")
