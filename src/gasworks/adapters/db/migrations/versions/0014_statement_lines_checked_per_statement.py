"""statement lines name their file: checked once per statement, not once per row

A foreign key checks each inserted row with its own trigger event: for a million-line statement
stored by COPY that was most of the import (about 15 s of 1M rows on a loaded machine). On
PostgreSQL the foreign key becomes one statement-level check over the inserted rows (a transition
table), and a file with lines cannot be deleted. SQLite keeps its foreign key (its check is cheap).

Revision ID: 0014
Revises: 0011
"""

from alembic import op

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None

FOREIGN_KEY = "fk_statement_lines_file_id_statement_files"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint(FOREIGN_KEY, "statement_lines", type_="foreignkey")
    op.execute(
        """
        CREATE FUNCTION gasworks_statement_lines_name_their_file() RETURNS trigger AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_lines n WHERE NOT EXISTS (SELECT 1 FROM statement_files f WHERE f.id = n.file_id)) THEN
                RAISE EXCEPTION 'gasworks: a statement line names no statement file' USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute("CREATE TRIGGER statement_lines_name_their_file AFTER INSERT ON statement_lines REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION gasworks_statement_lines_name_their_file()")
    op.execute(
        """
        CREATE FUNCTION gasworks_statement_file_keeps_its_lines() RETURNS trigger AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM statement_lines WHERE file_id = OLD.id) THEN
                RAISE EXCEPTION 'gasworks: statement file % has lines', OLD.id USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN OLD;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute("CREATE TRIGGER statement_file_keeps_its_lines BEFORE DELETE OR UPDATE OF id ON statement_files FOR EACH ROW EXECUTE FUNCTION gasworks_statement_file_keeps_its_lines()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER statement_file_keeps_its_lines ON statement_files")
    op.execute("DROP FUNCTION gasworks_statement_file_keeps_its_lines()")
    op.execute("DROP TRIGGER statement_lines_name_their_file ON statement_lines")
    op.execute("DROP FUNCTION gasworks_statement_lines_name_their_file()")
    op.create_foreign_key(FOREIGN_KEY, "statement_lines", "statement_files", ["file_id"], ["id"])
