"""What every `gasworks` command shares: consoles, the error wrapper, the system it works on."""

import functools
import getpass
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.errors import GasworksError
from gasworks.observability import configure_logging

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable)

DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="Overrides GASWORKS_DATABASE_URL.")]


def cli_errors(command: F) -> F:
    """Expected failures become one clear line and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):  # noqa: ANN202, ANN002, ANN003
        try:
            return command(*args, **kwargs)
        except GasworksError as error:
            err.print(f"[bold red]error[/] {error.code}: {error.message}")
            raise typer.Exit(2) from None
        except OSError as error:
            err.print(f"[bold red]error[/] {type(error).__name__}: {error}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def system(database_url: str | None, **overrides: object) -> System:
    given = {"database_url": database_url, **overrides}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    configure_logging(json=settings.log_json)
    return bootstrap(settings)


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"
