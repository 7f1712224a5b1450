"""`gasworks broker`: a closed Mosquitto for the meters (password file, ACL, configuration)."""

from pathlib import Path
from typing import Annotated

import typer

from gasworks.domain.accounts import MeterKind
from gasworks.domain.errors import InvalidInput
from gasworks.entrypoints.cli.common import DatabaseUrl, cli_errors, lazy_module, out, system

broker = lazy_module("gasworks.adapters.meters.broker")

broker_app = typer.Typer(help="A closed MQTT broker for the meters: users, passwords, ACL, Mosquitto config.", no_args_is_help=True)

Directory = Annotated[Path, typer.Option("--out", help="Directory of the broker's files (site-secret, passwd, acl, mosquitto.conf).")]


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")


def _iot_serials(database_url: str | None) -> list[str]:
    from sqlalchemy import inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from gasworks.adapters.db.tables import meters

    sys_ = system(database_url)
    try:
        if not inspect(sys_.engine).has_table("meters"):
            raise InvalidInput(
                f"no meters table in {sys_.engine.url.render_as_string(hide_password=True)}: run `gasworks db upgrade`, or pass --no-from-database",
                code="DATABASE_NOT_MIGRATED",
            )
        with sys_.engine.connect() as c:
            return list(c.scalars(select(meters.c.serial).where(meters.c.kind == MeterKind.IOT.value).order_by(meters.c.serial)))
    except SQLAlchemyError as error:
        raise InvalidInput(f"cannot read meters from the database: {type(error).__name__}", code="DATABASE_UNREACHABLE") from None
    finally:
        sys_.engine.dispose()


def _topic_prefix() -> str:
    from gasworks.config import Settings

    return Settings().mqtt_topic_prefix


@broker_app.command("provision")
@cli_errors
def provision(
    out_dir: Directory,
    prefix: Annotated[str | None, typer.Option(help="Topic prefix (GASWORKS_MQTT_TOPIC_PREFIX, default gasworks/meters).")] = None,
    port: Annotated[int, typer.Option(help="Port the broker listens on.")] = 1883,
    bind: Annotated[str, typer.Option(help="Address the broker listens on.")] = "0.0.0.0",
    host: Annotated[str, typer.Option(help="Host name clients use, for the printed URLs.")] = "127.0.0.1",
    persistence: Annotated[bool, typer.Option(help="Keep the broker's state on disk across restarts.")] = False,
    meter: Annotated[list[str] | None, typer.Option("--meter", help="A meter serial to admit (repeatable), besides the database's.")] = None,
    from_database: Annotated[bool, typer.Option(help="Admit every IoT meter in the database.")] = True,
    database_url: DatabaseUrl = None,
) -> None:
    """Write passwd, acl and mosquitto.conf for a closed broker and print the worker's and simulator's URLs.

    Run it again after adding meters (same site secret, same passwords), then `kill -HUP` the broker."""
    serials = list(meter or [])
    if from_database:
        serials += _iot_serials(database_url)
    done = broker.provision(out_dir, prefix=prefix or _topic_prefix(), serials=serials, port=port, bind=bind, persistence=persistence)
    out.print(f"broker files in [bold]{done.directory}[/]: passwd ({done.meters} meters + worker + fleet), acl, mosquitto.conf; site-secret is private (0600)")
    out.print(f"start it:    mosquitto -c {done.directory / 'mosquitto.conf'}")
    out.print(f"after adding meters: run this again, then kill -HUP <mosquitto pid> (topics under {done.prefix}/)")
    out.print("workers (GASWORKS_MQTT_URL):")
    print(f"  {done.url(broker.WORKER_USER, done.worker_password, host)}")
    out.print("simulator's meter gateway (`fleet`, many simulated meters on one connection; never a real device):")
    print(f"  {done.url(broker.FLEET_USER, done.fleet_password, host)}")
    out.print(f"one real meter's credentials: gasworks broker meter-credentials SERIAL --out {done.directory}")


@broker_app.command("meter-credentials")
@cli_errors
def meter_credentials(
    serial: Annotated[str, typer.Argument(help="The meter's 14-digit serial: its MQTT username.")],
    out_dir: Directory,
    host: Annotated[str, typer.Option(help="Broker host name, for the printed URL.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Broker port, for the printed URL (default: the provisioned listener's).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Topic prefix (GASWORKS_MQTT_TOPIC_PREFIX).")] = None,
) -> None:
    """Print one meter's MQTT credentials (the same every time) and admit it to the password file."""
    password = broker.add_meter(out_dir.resolve(), serial)
    port = port or broker.provisioned_port(out_dir.resolve())
    topics = prefix or _topic_prefix()
    out.print(f"meter {serial}: admitted to {out_dir.resolve() / 'passwd'} (kill -HUP the broker to take it)")
    out.print(f"  publishes {topics}/{serial}/up, subscribes {topics}/{serial}/down, nothing else")
    print(f"username: {serial}")
    print(f"password: {password}")
    print(f"url: mqtt://{serial}:{password}@{host}:{port}")
