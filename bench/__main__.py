"""`uv run python -m bench`: every benchmark against PostgreSQL (and Mosquitto), one table.

Each bench module exposes `measure(scale: float = 1.0) -> list[BenchRow]` (scale 1.0 is the issue's
full size). A module that does not (yet) gets a row saying so instead of stopping the run, and so
does one that fails: the table still shows what the others measured.

    uv run python -m bench                      # everything at full size
    uv run python -m bench --scale 0.01 --only city_day,intake
"""

import importlib
import time
import traceback
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from bench.table import BenchRow, print_table

BENCHES = ("intake", "delivery", "reconcile", "city_day", "province")
SCALE_MAX = 10.0  # ten times the size is already hours; a bound, not a target


def unmeasured(name: str, why: str) -> BenchRow:
    """The row of a benchmark that produced no figure: never counted as met."""
    return BenchRow(path=f"bench.{name}", ours=0.0, raw_limit=0.0, unit="-", higher_is_better=True, target="-", met=False, note=why[:200])


def measure_one(name: str, scale: float, *, importer: Callable[[str], object] = importlib.import_module) -> list[BenchRow]:
    try:
        module = importer(f"bench.{name}")
    except ImportError as error:
        return [unmeasured(name, f"cannot import: {error}")]
    measure = getattr(module, "measure", None)
    if not callable(measure):
        return [unmeasured(name, f"has no measure(scale) yet: run `python -m bench.{name}` on its own")]
    try:
        return list(measure(scale))
    except Exception as error:  # noqa: BLE001 - one failing benchmark must not hide the others' figures
        traceback.print_exc()
        return [unmeasured(name, f"failed: {type(error).__name__}: {error}")]


def parse_only(only: str | None) -> list[str]:
    if not only:
        return list(BENCHES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise typer.BadParameter(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}", param_hint="--only")
    return names


def main(
    scale: Annotated[float, typer.Option(min=0.0001, max=SCALE_MAX, help="1.0 = the issue's full size; smaller for a quick run.")] = 1.0,
    only: Annotated[str | None, typer.Option(help=f"Comma-separated subset of {','.join(BENCHES)}.")] = None,
) -> None:
    """Run the benchmarks and print one table: ours, the raw limit in the same run, ratio, target, peak RSS."""
    names = parse_only(only)
    console = Console()
    if not console.is_terminal:  # a log file or CI: wide enough for the table's notes
        console = Console(width=200)
    rows: list[BenchRow] = []
    started = time.perf_counter()
    for name in names:
        console.print(f"[bold]bench.{name}[/] at scale {scale} ...")
        rows.extend(measure_one(name, scale))
    print_table(rows, title=f"gasworks benchmarks, scale {scale}, {time.perf_counter() - started:.0f} s (figures from a shared, loaded machine)", console=console)
    if any(not row.met and row.unit != "-" for row in rows) or any(row.note.startswith("failed") for row in rows):
        raise typer.Exit(1)  # a target missed or a benchmark broken; a module without measure() yet is only noted


if __name__ == "__main__":
    typer.run(main)
