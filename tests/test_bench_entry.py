"""`python -m bench`: one table whatever each bench module offers, and only known names."""

from types import SimpleNamespace

import pytest
import typer
from bench.__main__ import BENCHES, measure_one, parse_only
from bench.table import BenchRow


def row(path: str) -> BenchRow:
    return BenchRow(path=path, ours=2.0, raw_limit=4.0, unit="s", higher_is_better=False, target="≤ 10 min", met=True)


def test_a_module_with_measure_gives_its_rows_at_the_scale_asked() -> None:
    asked = []
    module = SimpleNamespace(measure=lambda scale: asked.append(scale) or [row("city day")])
    assert measure_one("city_day", 0.01, importer=lambda name: module) == [row("city day")]
    assert asked == [0.01]


def test_a_module_without_measure_is_a_row_saying_so_not_a_crash() -> None:
    [only] = measure_one("intake", 1.0, importer=lambda name: SimpleNamespace(main=lambda: None))
    assert not only.met and "no measure(scale)" in only.note and only.path == "bench.intake"


def test_a_failing_benchmark_is_a_row_and_the_others_still_run() -> None:
    def broken(scale: float) -> list[BenchRow]:
        raise RuntimeError("database went away")

    [only] = measure_one("delivery", 1.0, importer=lambda name: SimpleNamespace(measure=broken))
    assert not only.met and only.note.startswith("failed: RuntimeError: database went away")


def test_only_takes_known_benchmarks() -> None:
    assert parse_only(None) == list(BENCHES)
    assert parse_only("city_day, intake") == ["city_day", "intake"]
    with pytest.raises(typer.BadParameter):
        parse_only("city_day,everything")
