"""`gasworks carriers`: put a meter behind a carrier platform (CTWing), and see how it stands there."""

from typing import Annotated

import typer
from rich.table import Table

from gasworks.domain.carriers import CarrierDevice, CarrierPlatform, command_ttl_s
from gasworks.domain.errors import InvalidInput
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_actor, cli_errors, lazy_module, out, system

carriers_app = typer.Typer(help="Meters behind NB-IoT carrier platforms (CTWing).", no_args_is_help=True)

carriers = lazy_module("gasworks.services.carriers")  # the database loads when a command runs, not for --help


def register(app: typer.Typer) -> None:
    app.add_typer(carriers_app, name="carriers")


@carriers_app.command("register")
@cli_errors
def register_device(
    serial: Annotated[str, typer.Argument(help="The IoT meter's 14-digit serial.")],
    device_id: Annotated[str, typer.Option("--device-id", help="The platform's device id (CTWing: deviceId).")],
    product_id: Annotated[str, typer.Option("--product-id", help="The platform's product id.")],
    imei: Annotated[str, typer.Option(help="The module's IMEI.")] = "",
    platform: Annotated[str, typer.Option(help="ctwing (OneNET and IoTDA: not yet).")] = "ctwing",
    report_interval_s: Annotated[int | None, typer.Option(help="How often this meter reports (default GASWORKS_CARRIER_REPORT_INTERVAL_S).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """From now on this meter's commands go through the platform, cached for its report interval plus the margin."""
    if platform != CarrierPlatform.CTWING.value:
        raise InvalidInput(f"gasworks sends through ctwing only so far, not {platform[:20]!r}", code="PLATFORM_NOT_SUPPORTED")
    sys_ = system(database_url)
    settings = sys_.settings
    interval_s = report_interval_s or settings.carrier_report_interval_s
    device = CarrierDevice(serial, CarrierPlatform.CTWING, device_id, product_id, imei, interval_s, sys_.clock.now())
    carriers.register_device(device, sys_.new_uow(), actor=cli_actor(), ttl_margin_s=settings.carrier_command_ttl_margin_s)
    ttl_s = command_ttl_s(interval_s, ttl_margin_s=settings.carrier_command_ttl_margin_s)
    out.print(f"meter {serial} is on CTWing as device {device_id} (product {product_id}); its commands are cached {ttl_s:,} s")


@carriers_app.command("show")
@cli_errors
def show(serial: Annotated[str, typer.Argument(help="The meter's serial.")], database_url: DatabaseUrl = None) -> None:
    """The meter's platform registration and its module's last known state."""
    sys_ = system(database_url)
    device = carriers.get_device(serial, sys_.new_uow())
    table = Table(title=f"meter {serial}", title_justify="left")
    table.add_column("")
    table.add_column("")
    module = "unknown" if device.online is None else ("online" if device.online else "offline")
    for label, value in (
        ("platform", device.platform.value), ("device id", device.device_id), ("product id", device.product_id), ("IMEI", device.imei or "-"),
        ("report interval", f"{device.report_interval_s:,} s"),
        ("command TTL", f"{command_ttl_s(device.report_interval_s, ttl_margin_s=sys_.settings.carrier_command_ttl_margin_s):,} s"),
        ("module", f"{module} (as the platform last said; not a report from the meter)"), ("registered", f"{device.registered_at:%Y-%m-%d %H:%M} UTC"),
    ):  # fmt: skip
        table.add_row(label, value)
    out.print(table)
