"""What every `gasworks` command shares: consoles, the error wrapper, the system it works on.

`gasworks --help` must answer at once, so nothing here (or in a command module's top level) imports
SQLAlchemy, Alembic, FastAPI, DuckDB, uvicorn or the simulator: a command imports what it needs when
it runs, directly or through `lazy_module`.
"""

import functools
import getpass
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from gasworks.domain.errors import GasworksError

if TYPE_CHECKING:
    from gasworks.bootstrap import System


class _Console(Console):
    """Takes COLUMNS when it prints, not when it was made: a command run in-process (a test's
    CliRunner, the demo) is as wide as its caller asks, whatever COLUMNS said at import."""

    @property
    def size(self) -> ConsoleDimensions:
        measured = Console.size.fget(self)  # type: ignore[attr-defined]
        columns = os.environ.get("COLUMNS", "")
        return ConsoleDimensions(int(columns), measured.height) if columns.isdigit() and int(columns) > 0 else measured

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _Console()
err = _Console(stderr=True)
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


class lazy_module:  # noqa: N801 -- stands where a module name stood
    """A module imported on first attribute use: `channels = lazy_module("gasworks.services.channels")`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:  # noqa: ANN401
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)


def system(database_url: str | None, **overrides: object) -> "System":
    from gasworks.bootstrap import bootstrap
    from gasworks.config import Settings
    from gasworks.observability import configure_logging

    given = {"database_url": database_url, **overrides}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    configure_logging(json=settings.log_json)
    return bootstrap(settings)


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"
