"""The schema itself: migrations apply on both databases, history is append-only, keys rotate safely."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from gasworks.adapters.db.engine import SCHEMA_HEAD, schema_revision
from gasworks.adapters.db.migrate import current_revision, upgrade
from gasworks.domain.channels import KeyPurpose, PaymentNotice
from gasworks.domain.errors import Conflict
from gasworks.entrypoints.cli.main import app as cli
from gasworks.services import channels
from gasworks.services.intake import accept_payment
from tests.support import ACCOUNT_NO, WALLET_SECRET, set_up


def test_migrations_reach_head_and_are_idempotent(system):
    upgrade(system.engine)
    assert current_revision(system.engine) == "0017" == SCHEMA_HEAD == schema_revision(system.engine)


def test_a_command_on_a_database_never_migrated_says_so_instead_of_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["check", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 2 and "SCHEMA_NOT_CURRENT" in result.output and "gasworks db upgrade" in result.output


@pytest.mark.parametrize("statement", ["UPDATE ledger_entries SET amount_fen = amount_fen + 1", "DELETE FROM ledger_entries", "DELETE FROM audit_log", "UPDATE payment_events SET note = 'x'", "UPDATE meter_command_events SET note = 'x'"])
def test_history_cannot_be_rewritten_even_with_plain_sql(system, statement):
    set_up(system)
    accept_payment(PaymentNotice("wo-wallet", "T1", 100, None, account_no=ACCOUNT_NO), system.new_uow())
    with pytest.raises(DBAPIError, match="append-only"):
        with system.engine.begin() as c:
            c.execute(text(statement))


def test_the_last_key_of_a_channel_cannot_be_retired_and_a_third_cannot_be_added(system):
    set_up(system)
    with pytest.raises(Conflict, match="LAST_KEY|last active"):
        channels.retire_key(channel_id="wo-wallet", key_id="wo-1", uow=system.new_uow(), actor="test")
    channels.add_key(channel_id="wo-wallet", purpose=KeyPurpose.HMAC_SECRET, key_id="wo-2", material=WALLET_SECRET + "2", uow=system.new_uow(), actor="test")
    with pytest.raises(Conflict) as third:
        channels.add_key(channel_id="wo-wallet", purpose=KeyPurpose.HMAC_SECRET, key_id="wo-3", material=WALLET_SECRET + "3", uow=system.new_uow(), actor="test")
    assert third.value.code == "TOO_MANY_KEYS"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE payments SET amount_fen = 0",
        "UPDATE payments SET amount_fen = -100",
        "UPDATE payments SET state = 'paid_twice'",
        "UPDATE meter_commands SET purchase_seq = 0 WHERE purchase_seq IS NOT NULL",
        "UPDATE meter_commands SET state = 'teleported'",
        "UPDATE meter_commands SET volume_litres = 0 WHERE volume_litres IS NOT NULL",
        "UPDATE meters SET purchase_seq_issued = -1",
    ],
)
def test_the_database_refuses_what_the_domain_promises_never_to_write(system, statement):
    """A hand-typed statement (or a future bug) cannot write a zero payment, an unknown state or a serial below 1."""
    set_up(system)
    accept_payment(PaymentNotice("wo-wallet", "T1", 100, None, account_no=ACCOUNT_NO), system.new_uow())
    with pytest.raises(DBAPIError, match="(?i)check constraint|ck_"):
        with system.engine.begin() as c:
            c.execute(text(statement))


def test_a_statement_line_must_name_its_file_and_a_file_keeps_its_lines(system):
    from datetime import UTC, date, datetime

    from gasworks.services import reconciliation
    from gasworks.sim.statements import plain_statement
    from gasworks.sim.world import Collected

    set_up(system)
    raw = plain_statement(date(2026, 11, 20), [Collected("wo-wallet", "T1", ACCOUNT_NO, 100, datetime(2026, 11, 20, 1, tzinfo=UTC))])
    imported = reconciliation.import_statement(channel_id="wo-wallet", statement_date=date(2026, 11, 20), filename="s.csv", raw=raw, uow=system.new_uow(), actor="test")
    with pytest.raises(DBAPIError, match="statement file|FOREIGN KEY"):
        with system.engine.begin() as c:
            c.execute(text("INSERT INTO statement_lines (file_id, line_no, channel_txn_id, amount_fen, fee_fen, status) VALUES (999, 2, 'X', 1, 0, 'paid')"))
    with pytest.raises(DBAPIError, match="has lines|FOREIGN KEY"):
        with system.engine.begin() as c:
            c.execute(text("DELETE FROM statement_files WHERE id = :id"), {"id": imported.file_id})
