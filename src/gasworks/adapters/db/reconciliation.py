"""Repositories for statements and reconciliation runs, and the bulk exports the matcher reads."""

import csv
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken
from gasworks.domain.delivery import CommandKind
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState, StatementFile
from gasworks.services.statement_matching import LINES_HEADER, NEAR_HEADER, PAYMENTS_HEADER, ReadStatement

INSERT_BATCH = 5_000
COPY_CHUNK_BYTES = 1024 * 1024
EXPORT_CHUNK_ROWS = 20_000


class Statements:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def find(self, channel_id: str, statement_date: date, sha256: str) -> StatementFile | None:
        f = t.statement_files
        row = self.c.execute(select(f).where(f.c.channel_id == channel_id, f.c.statement_date == statement_date, f.c.sha256 == sha256)).first()
        return StatementFile(**row._mapping) if row else None

    def get(self, file_id: int) -> StatementFile | None:
        row = self.c.execute(select(t.statement_files).where(t.statement_files.c.id == file_id)).first()
        return StatementFile(**row._mapping) if row else None

    def add(self, *, channel_id: str, statement_date: date, format_: str, sha256: str, filename: str, statement: ReadStatement, at: datetime, actor: str) -> int | None:
        """The file and all its lines in bulk (COPY on PostgreSQL), or None if this file (by content) was imported before."""
        file_id = self.c.execute(
            insert_unless_taken(self.c, t.statement_files)
            .values(
                channel_id=channel_id, statement_date=statement_date, format=format_, sha256=sha256, filename=filename[:200],
                lines=statement.lines, paid_total_fen=statement.paid_total_fen, fee_total_fen=statement.fee_total_fen,
                imported_at=at, imported_by=actor,
            )
            .returning(t.statement_files.c.id)
        ).scalar_one_or_none()  # fmt: skip
        if file_id is None:
            return None
        if self.c.dialect.name == "postgresql":
            lines_csv = statement.lines_csv(file_id)
            with (
                lines_csv.open("rb") as source,
                self.c.connection.driver_connection.cursor().copy(  # type: ignore[union-attr]
                    "COPY statement_lines (file_id, line_no, channel_txn_id, out_trade_no, account_no, amount_fen, fee_fen, status, paid_at) FROM STDIN (FORMAT csv)"
                ) as copy,
            ):
                while chunk := source.read(COPY_CHUNK_BYTES):
                    copy.write(chunk)
            lines_csv.unlink()
        else:
            for batch in statement.batches(INSERT_BATCH):
                self.c.execute(
                    insert(t.statement_lines),
                    [
                        {"file_id": file_id, "line_no": x.line_no, "channel_txn_id": x.channel_txn_id, "out_trade_no": x.out_trade_no, "account_no": x.account_no,
                         "amount_fen": x.amount_fen, "fee_fen": x.fee_fen, "status": x.status.value, "paid_at": x.paid_at}
                        for x in batch
                    ],
                )  # fmt: skip
        return file_id

    def export_lines(self, file_id: int, path: Path) -> int:
        """The file's lines as CSV for the matcher: channel_txn_id,out_trade_no,account_no,amount_fen,fee_fen,status,line_no."""
        sl = t.statement_lines
        query = select(sl.c.channel_txn_id, sl.c.out_trade_no, sl.c.account_no, sl.c.amount_fen, sl.c.fee_fen, sl.c.status, sl.c.line_no).where(sl.c.file_id == file_id)
        return _export(self.c, query, path, LINES_HEADER)

    def export_neighbour_txns(self, channel_id: str, date_from: date, date_to: date, exclude_file_id: int, path: Path) -> int:
        """Transaction ids in the channel's other statements of nearby days: a payment dated one day
        by gasworks and the next by the channel is not unknown."""
        sl, f = t.statement_lines, t.statement_files
        query = select(sl.c.channel_txn_id).join(f, f.c.id == sl.c.file_id).where(f.c.channel_id == channel_id, f.c.statement_date >= date_from, f.c.statement_date <= date_to, f.c.id != exclude_file_id)
        return _export(self.c, query, path, NEAR_HEADER)


class Reconciliations:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def run_for_file(self, file_id: int) -> dict | None:
        row = self.c.execute(select(t.reconciliation_runs).where(t.reconciliation_runs.c.file_id == file_id)).first()
        return dict(row._mapping) if row else None

    def get_run(self, run_id: int) -> dict | None:
        row = self.c.execute(select(t.reconciliation_runs).where(t.reconciliation_runs.c.id == run_id)).first()
        return dict(row._mapping) if row else None

    def add_run(self, *, channel_id: str, statement_date: date, file_id: int, started_at: datetime, finished_at: datetime, actor: str, verdict: str, totals: dict, matched: int) -> int:
        return self.c.execute(
            insert(t.reconciliation_runs)
            .values(channel_id=channel_id, statement_date=statement_date, file_id=file_id, started_at=started_at, finished_at=finished_at, actor=actor, verdict=verdict, totals=totals, matched=matched)
            .returning(t.reconciliation_runs.c.id)
        ).scalar_one()

    def add_discrepancies(self, run_id: int, found: list[Discrepancy]) -> None:
        for start in range(0, len(found), INSERT_BATCH):
            self.c.execute(insert(t.discrepancies), [_discrepancy_row(run_id, d) for d in found[start : start + INSERT_BATCH]])

    def discrepancies(self, *, run_id: int | None = None, state: DiscrepancyState | None = None, klass: DiscrepancyClass | None = None, channel_id: str | None = None, limit: int) -> list[Discrepancy]:
        d = t.discrepancies
        query = select(d).order_by(d.c.id).limit(limit)
        for column, value in ((d.c.run_id, run_id), (d.c.state, state), (d.c["class"], klass), (d.c.channel_id, channel_id)):
            if value is not None:
                query = query.where(column == value)
        return [_discrepancy(r) for r in self.c.execute(query)]

    def get_discrepancy(self, discrepancy_id: int) -> Discrepancy | None:
        row = self.c.execute(select(t.discrepancies).where(t.discrepancies.c.id == discrepancy_id).with_for_update() if self.c.dialect.name == "postgresql" else select(t.discrepancies).where(t.discrepancies.c.id == discrepancy_id)).first()
        return _discrepancy(row) if row else None

    def settle(self, discrepancy_id: int, *, state: DiscrepancyState, at: datetime, by: str, resolution: str, from_state: DiscrepancyState | None = None) -> bool:
        """False when `from_state` is given and the discrepancy was no longer in it (decided meanwhile)."""
        d = t.discrepancies
        where = [d.c.id == discrepancy_id] + ([d.c.state == from_state.value] if from_state is not None else [])
        return self.c.execute(update(d).where(*where).values(state=state.value, resolved_at=at, resolved_by=by, resolution=resolution[:300])).rowcount == 1

    def carried_over(self, channel_id: str, before: date) -> list[Discrepancy]:
        d, r = t.discrepancies, t.reconciliation_runs
        rows = self.c.execute(select(d).join(r, r.c.id == d.c.run_id).where(d.c.channel_id == channel_id, d.c.state == DiscrepancyState.CARRIED_OVER.value, r.c.statement_date < before))
        return [_discrepancy(x) for x in rows]

    def export_payments(self, channel_id: str, received_from: datetime, received_to: datetime, path: Path) -> int:
        """The channel's payments in the window, as CSV for the matcher, with their purchase's delivery."""
        p, mc = t.payments, t.meter_commands
        query = (
            select(
                p.c.id, p.c.channel_txn_id, p.c.amount_fen, p.c.state, p.c.account_no, func.coalesce(p.c.paid_at, p.c.received_at).label("paid_at"),
                mc.c.id.label("command_id"), mc.c.state.label("command_state"), mc.c.route, mc.c.created_at.label("ordered_at"),
            )
            .outerjoin(mc, and_(mc.c.payment_id == p.c.id, mc.c.kind == CommandKind.CREDIT.value))
            .where(p.c.channel_id == channel_id, p.c.received_at >= received_from, p.c.received_at < received_to)
        )  # fmt: skip
        return _export(self.c, query, path, PAYMENTS_HEADER)


def _export(c: Connection, query: Any, path: Path, header: str) -> int:
    """Rows as CSV for the matcher, returning how many. On PostgreSQL the server writes the CSV and
    sends it in chunks of EXPORT_CHUNK_ROWS lines: COPY TO sends one message per row, and a
    million of them cost seconds of Python on our side."""
    if c.dialect.name == "postgresql":
        compiled = query.compile(dialect=c.dialect)
        names = [f"c{i}" for i in range(len(query.selected_columns))]
        cells = " || ',' || ".join(f"""CASE WHEN q.{n} IS NULL THEN '' ELSE '"' || replace(q.{n}::text, '"', '""') || '"' END""" for n in names)
        chunks = f"SELECT string_agg(line, E'\\n') FROM (SELECT {cells} AS line, (row_number() OVER ()) / {EXPORT_CHUNK_ROWS} AS chunk FROM ({compiled}) AS q({', '.join(names)})) AS lines GROUP BY chunk"
        count = 0
        with path.open("w", encoding="utf-8") as out:
            out.write(header + "\n")
            for (chunk,) in c.connection.driver_connection.cursor().stream(chunks, compiled.params):  # type: ignore[union-attr]
                out.write(chunk)
                out.write("\n")
                count += chunk.count("\n") + 1
        return count
    count = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header.split(","))
        for row in c.execute(query):
            writer.writerow(["" if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in row])
            count += 1
    return count


def _discrepancy_row(run_id: int, d: Discrepancy) -> dict:
    return {
        "run_id": run_id, "class": d.klass.value, "state": d.state.value, "channel_id": d.channel_id, "channel_txn_id": d.channel_txn_id,
        "payment_id": d.payment_id, "statement_amount_fen": d.statement_amount_fen, "gasworks_amount_fen": d.gasworks_amount_fen,
        "detail": d.detail[:500], "proposed_action": d.proposed_action[:300],
    }  # fmt: skip


def _discrepancy(row: Any) -> Discrepancy:
    m = row._mapping
    return Discrepancy(
        id=m["id"], run_id=m["run_id"], klass=DiscrepancyClass(m["class"]), state=DiscrepancyState(m["state"]), channel_id=m["channel_id"],
        channel_txn_id=m["channel_txn_id"], payment_id=m["payment_id"], statement_amount_fen=m["statement_amount_fen"],
        gasworks_amount_fen=m["gasworks_amount_fen"], detail=m["detail"], proposed_action=m["proposed_action"],
        resolved_at=m["resolved_at"], resolved_by=m["resolved_by"], resolution=m["resolution"],
    )  # fmt: skip
