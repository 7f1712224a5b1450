"""One row per benchmark: our figure beside the raw limit measured in the same run, the ratio, the target and peak memory.

Every bench module exposes `measure(...) -> list[BenchRow]`; `python -m bench` runs them all and
prints one table. Targets live here, in the benchmark, never in timed unit tests.
"""

import resource
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class BenchRow:
    path: str  # what was measured, e.g. "intake over HTTP, 16 clients"
    ours: float
    raw_limit: float  # the same work done by the bare engine (pgbench, bare DuckDB join, bare publish) in the same run
    unit: str  # "payments/s", "ms p99", "s"
    higher_is_better: bool
    target: str  # as the issue states it, e.g. "≥ 0.5 × raw"
    met: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """How close to the raw limit: 1.0 is the engine's own speed, whichever way the unit runs."""
        if self.higher_is_better:
            return self.ours / self.raw_limit if self.raw_limit else 0.0
        return self.raw_limit / self.ours if self.ours else 0.0


def peak_rss_mib() -> int:
    """Peak resident memory of this process and of its waited-for children, in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) // 1024


def print_table(rows: list[BenchRow], *, title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    for column in ("path", "ours", "raw limit", "unit", "ratio", "target", "met", "note"):
        table.add_column(column, justify="left" if column in ("path", "target", "note", "unit") else "right")
    for row in rows:
        table.add_row(row.path, f"{row.ours:,.1f}", f"{row.raw_limit:,.1f}", row.unit, f"{row.ratio:.3f}", row.target, "yes" if row.met else "NO", row.note)
    (console or Console()).print(table)
    (console or Console()).print(f"peak RSS {peak_rss_mib():,} MiB")
