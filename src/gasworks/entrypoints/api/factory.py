"""The API built from the environment alone, for uvicorn's worker processes (`--factory`).

Each worker process imports this and builds its own System (engine, pool, caches) from GASWORKS_*:
nothing is shared between processes but the database.
"""

from fastapi import FastAPI

from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.entrypoints.api.app import create_app
from gasworks.observability import configure_logging

APP_FACTORY = "gasworks.entrypoints.api.factory:app_from_environment"


def app_from_environment() -> FastAPI:
    settings = Settings()
    configure_logging(json=settings.log_json)
    return create_app(bootstrap(settings))
