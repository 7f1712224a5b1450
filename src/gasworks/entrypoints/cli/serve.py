"""`gasworks serve`: the HTTP API in one process, or in N uvicorn worker processes.

One process (the default): the delivery worker runs as a thread beside the API, as it always has.
N > 1: uvicorn starts N API processes from the app factory (entrypoints/api/factory.py), each with
its own engine and pool; the delivery worker gets a process of its own (spawned, not forked, so it
shares no interpreter, lock or socket with the API) and is stopped when the API stops.
"""

import multiprocessing
import os
import threading

import uvicorn

from gasworks.bootstrap import System
from gasworks.config import Settings
from gasworks.domain.errors import InvalidInput
from gasworks.entrypoints.cli.common import out, system
from gasworks.observability import configure_logging

API_WORKERS_MAX = 64  # a bound on processes: each holds a pool of up to 30 database connections
WORKER_STOP_WAIT_S = 10
WORKER_START_WAIT_S = 60


def run_delivery_worker(database_url: str) -> None:
    """The delivery worker's own process: a System of its own, stopped by SIGTERM from `serve`."""
    import signal

    from gasworks.bootstrap import bootstrap
    from gasworks.entrypoints.workers.worker import Worker

    settings = Settings(database_url=database_url)
    configure_logging(json=settings.log_json)
    sys_ = bootstrap(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Worker(sys_, sys_.meter_transport()).run(stop)


def serve_api(*, host: str | None, port: int | None, database_url: str | None, worker: bool, api_workers: int) -> None:
    from gasworks.entrypoints.api.app import create_app
    from gasworks.entrypoints.api.factory import APP_FACTORY
    from gasworks.entrypoints.workers.worker import Worker

    if not 1 <= api_workers <= API_WORKERS_MAX:
        raise InvalidInput(f"--workers is 1 to {API_WORKERS_MAX}", code="INVALID_WORKERS")
    sys_ = system(database_url)
    sys_.migrate()
    host = host or sys_.settings.host
    port = port or sys_.settings.port
    _print_banner(sys_, host, port, worker, api_workers)
    if api_workers == 1:
        stop = threading.Event()
        if worker:
            threading.Thread(target=Worker(sys_, sys_.meter_transport()).run, args=(stop,), name="gasworks-worker", daemon=True).start()
        try:
            uvicorn.run(create_app(sys_), host=host, port=port, log_level="info")
        finally:
            stop.set()
        return
    url = sys_.engine.url.render_as_string(hide_password=False)
    os.environ["GASWORKS_DATABASE_URL"] = url  # the API processes build their System from the environment
    delivery = multiprocessing.get_context("spawn").Process(target=run_delivery_worker, args=(url,), name="gasworks-worker") if worker else None
    if delivery is not None:
        delivery.start()
    try:
        # A worker imports all of gasworks before it answers the supervisor's first health check: on a
        # busy machine that takes longer than uvicorn's 5 s default, and it would be killed for it.
        uvicorn.run(APP_FACTORY, factory=True, workers=api_workers, host=host, port=port, log_level="info", timeout_worker_healthcheck=WORKER_START_WAIT_S)
    finally:
        if delivery is not None:
            delivery.terminate()
            delivery.join(WORKER_STOP_WAIT_S)


def _print_banner(sys_: System, host: str, port: int, worker: bool, api_workers: int) -> None:
    out.print(f"gasworks on [bold]{sys_.engine.url.render_as_string(hide_password=True)}[/]")
    out.print(f"  API:      http://{host}:{port}/v1/   (health: http://{host}:{port}/healthz), {api_workers} process(es)")
    out.print(f"  API docs: http://{host}:{port}/docs")
    out.print(f"  metrics:  http://{host}:{port}/metrics" + ("  (per API process: each scrape sees the one that answers)" if api_workers > 1 else ""))
    out.print("  first steps: `gasworks keys add --role operator --name you`, then `gasworks channels add --help`")
    if not worker:
        where = "off (run `gasworks worker`)"
    elif api_workers == 1:
        where = "in this process"
    else:
        where = "in a process of its own"
    out.print(f"  delivery worker: {where}")
