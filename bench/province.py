"""The province router's cost: signed wallet payments to one city's API directly (the raw limit) and
through `gasworks province serve`'s router (entrypoints/api/province.py), same database, same run.

    uv run python -m bench.province [--scale 0.1]

Both servers are uvicorn in this process, sharing its CPU with the load generator: the ratio is
what the router adds (routing, the bulkhead, the rest check), not an absolute rate.
"""

from typing import Annotated

import typer

from bench.fresh_database import fresh_database
from bench.intake import http_sender, prepared_system, signed_requests, timed
from bench.table import BenchRow, print_table
from gasworks.config import CityConfig, ProvinceConfig, Settings
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.api.province import create_province_app
from gasworks.observability import configure_logging
from gasworks.sim.stubs.serving import ServedApp

CITY = "4300"  # bench/intake.py's account numbers are 43000000xx
CLIENTS = 8
ROUNDS = 2  # direct and routed alternate, so a noisy moment on this shared machine hits both
TARGET_RATIO = 0.9


def measure(scale: float = 1.0) -> list[BenchRow]:
    configure_logging(level=40)
    n = max(100, int(2000 * scale))
    with fresh_database() as url:
        system = prepared_system(url)
        config = ProvinceConfig(cities=[CityConfig(code=CITY, name="bench", database_url=url, channels=["wallet"])])
        router = create_province_app(config, Settings(database_url=url))
        direct, routed = ServedApp(create_app(system)).start(), ServedApp(router).start()
        try:
            direct_rates, routed_rates = [], []
            for round_ in range(ROUNDS):
                direct_rates.append(timed(http_sender(direct.base_url), signed_requests(f"direct{round_}", n), CLIENTS).rate_per_s)
                routed_rates.append(timed(http_sender(routed.base_url), signed_requests(f"routed{round_}", n), CLIENTS).rate_per_s)
        finally:
            direct.stop()
            routed.stop()
            system.engine.dispose()
            for city_system in router.systems.values():
                city_system.engine.dispose()
    ours, raw = sum(routed_rates) / ROUNDS, sum(direct_rates) / ROUNDS
    return [
        BenchRow(
            f"province router → city API, {CLIENTS} clients",
            ours,
            raw,
            "payments/s",
            True,
            f"≥ {TARGET_RATIO} × the city's own API",
            ours >= TARGET_RATIO * raw,
            note=f"{n:,} signed wallet payments each way, {ROUNDS} alternating rounds; raw limit: the same city API without the router",
        )
    ]


def main(scale: Annotated[float, typer.Option(help="1.0: 2,000 payments each way per round.")] = 1.0) -> None:
    print_table(measure(scale), title="the province router against the city's own API")


if __name__ == "__main__":
    typer.run(main)
