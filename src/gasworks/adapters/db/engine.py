"""Engines for the system of record: a SQLite file by default, PostgreSQL in production."""

from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gasworks.domain.errors import InvalidInput

LIBPQ_SCHEMES = ("postgres://", "postgresql://")
SCHEMA_HEAD = "0017"  # the newest migration; tests/test_database.py holds it to Alembic's head


def make_engine(database_url: str, *, sqlite_synchronous: str = "FULL", connect_timeout_s: int = 5) -> Engine:
    """`sqlite_synchronous`: FULL (default) survives power loss; NORMAL, for throwaway data such as
    a demo city, survives a crash of gasworks but may lose the last commits on power loss.

    PostgreSQL URLs may name several hosts, as libpq's do (`postgres://h1:p1,h2:p2/db?target_session_attrs=read-write`,
    what `pg_autoctl show uri` prints) or as SQLAlchemy's do (`...?host=h1:p1&host=h2:p2`): each new
    connection tries them in turn and keeps the one that is the primary now."""
    database_url = sqlalchemy_url(database_url)
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError("sqlite_synchronous is FULL or NORMAL")
        _serialise_sqlite_writers(engine, sqlite_synchronous)
        return engine
    # A host that does not answer (a dead machine, a cut network) is given up on after connect_timeout_s
    # (per host of a multi-host URL) instead of the operating system's minutes of SYN retries.
    return create_engine(database_url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_s})


def sqlalchemy_url(database_url: str) -> str:
    """A libpq URL, single- or multi-host, as SQLAlchemy's psycopg 3 dialect takes it."""
    scheme = next((prefix for prefix in LIBPQ_SCHEMES if database_url.startswith(prefix)), None)
    if scheme is None:
        return database_url
    parts = urlsplit(database_url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return "postgresql+psycopg://" + database_url.removeprefix(scheme)
    query = [("host", host) for host in hosts.split(",") if host] + parse_qsl(parts.query)
    netloc = f"{userinfo}@" if userinfo else ""
    return f"postgresql+psycopg://{netloc}{parts.path}?{urlencode(query, safe=':')}"


def is_cut_off(error: BaseException) -> bool:
    """The database went away under a unit of work (a failover, a dropped connection, a deadlock
    or a serialisation failure): whether its commit happened is unknown, and running the use case
    again through its idempotent path is the way to know."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


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


def is_schema_behind(error: BaseException) -> bool:
    """A table or column this gasworks needs is not in the database: it was not migrated."""
    import psycopg

    return isinstance(error, DBAPIError) and isinstance(error.orig, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn))


def schema_revision(engine: Engine) -> str | None:
    """The schema's migration revision, None for a database gasworks never migrated. Without
    Alembic: a command that only reads must not pay for importing it."""
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as c:
        return c.execute(text("SELECT version_num FROM alembic_version")).scalar()


def require_current_schema(engine: Engine) -> None:
    """A clear refusal, instead of a missing table's traceback, for a database not at this gasworks' schema."""
    revision = schema_revision(engine)
    if revision != SCHEMA_HEAD:
        where = engine.url.render_as_string(hide_password=True)
        have = f"at revision {revision}" if revision else "empty (never migrated)"
        raise InvalidInput(f"the database {where} is {have}; this gasworks needs {SCHEMA_HEAD}: run `gasworks db upgrade` first", code="SCHEMA_NOT_CURRENT")
