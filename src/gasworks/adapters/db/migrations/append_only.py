"""Shared by migrations: tables whose rows can be added, never changed."""

from alembic import op


def forbid_update_and_delete(table: str) -> None:
    """Ledger entries, timelines and the audit log are append-only, enforced by the database
    itself so that no code path (or hand-typed SQL) can rewrite history."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION gasworks_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'gasworks: % is append-only (% refused)', TG_TABLE_NAME, TG_OP;
            END $$ LANGUAGE plpgsql
            """
        )
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION gasworks_append_only()")
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} BEGIN SELECT RAISE(ABORT, 'gasworks: {table} is append-only'); END")
