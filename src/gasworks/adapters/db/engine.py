"""Engines for the system of record: a SQLite file by default, PostgreSQL in production."""

from sqlalchemy import Engine, create_engine, event


def make_engine(database_url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """`sqlite_synchronous`: FULL (default) survives power loss; NORMAL, for throwaway data such as
    a demo city, survives a crash of gasworks but may lose the last commits on power loss."""
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError("sqlite_synchronous is FULL or NORMAL")
        _serialise_sqlite_writers(engine, sqlite_synchronous)
        return engine
    return create_engine(database_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _serialise_sqlite_writers(engine: Engine, synchronous: str) -> None:
    """SQLite allows one writer. BEGIN IMMEDIATE takes the write lock up front, so two writers
    queue (up to the busy timeout) instead of failing half-way with 'database is locked'."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")
