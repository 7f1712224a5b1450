"""How long `gasworks --help` and `gasworks check --help` take to answer, beside a bare Typer app's.

Each is run `runs` times as a fresh process; the fastest run counts (the others waited on a busy
machine). The raw limit is a two-command Typer app doing nothing, in the same run: Python's and
Typer's own start-up, which no command line built on Typer can go below.

    uv run python -m bench.cli_startup --runs 7
"""

import subprocess
import sys
import time

import typer

from bench.table import BenchRow, print_table

BARE_TYPER = """
import typer
app = typer.Typer()
@app.command()
def check(database_url: str = None) -> None:
    '''Prove nothing.'''
@app.command()
def serve() -> None:
    '''Serve nothing.'''
app()
"""


def _fastest_s(command: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, timeout=120)
        best = min(best, time.perf_counter() - started)
    return best


def measure(scale: float = 1.0) -> list[BenchRow]:
    runs = max(3, int(7 * scale))
    gasworks = [sys.executable, "-m", "gasworks.entrypoints.cli.main"]
    rows = []
    for args, bare_args in ((["--help"], ["--help"]), (["check", "--help"], ["check", "--help"])):
        ours = _fastest_s([*gasworks, *args], runs)
        bare = _fastest_s([sys.executable, "-c", BARE_TYPER, *bare_args], runs)
        rows.append(BenchRow(f"gasworks {' '.join(args)}", ours, bare, "s", False, "< 1 s", ours < 1.0, f"fastest of {runs}; raw: a bare two-command Typer app; loaded machine"))
    return rows


def main(runs: int = typer.Option(7, help="Processes started per command; the fastest counts.")) -> None:
    print_table(measure(runs / 7), title="command-line start-up (a loaded machine: read the ratios)")


if __name__ == "__main__":
    typer.run(main)
