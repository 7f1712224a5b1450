"""The DuckDB statement matcher: reads statement files (readers.py) and matches a day in one query.

The three CSV files (the statement's lines, the channel's payments with their purchase's delivery,
the neighbouring days' transaction ids) are loaded with explicit types, joined once (a full outer
join on the channel transaction id, materialized), and every class of discrepancy is a branch of
one UNION ALL over that join. Only the discrepancies and the matched count come back to Python.
"""

from pathlib import Path

import duckdb

from gasworks.adapters.statements.readers import DUCKDB_MEMORY_LIMIT, ReadStatement, read_statement
from gasworks.domain.channels import Channel
from gasworks.domain.statements import PROPOSED_ACTIONS, Discrepancy, DiscrepancyClass, DiscrepancyState
from gasworks.services.statement_matching import Match, MatchWindow

_LINES = "{'channel_txn_id': 'VARCHAR', 'out_trade_no': 'VARCHAR', 'account_no': 'VARCHAR', 'amount_fen': 'BIGINT', 'fee_fen': 'BIGINT', 'status': 'VARCHAR', 'line_no': 'INTEGER'}"
_PAYMENTS = (
    "{'payment_id': 'VARCHAR', 'channel_txn_id': 'VARCHAR', 'amount_fen': 'BIGINT', 'state': 'VARCHAR', 'account_no': 'VARCHAR', "
    "'paid_at': 'TIMESTAMPTZ', 'command_id': 'BIGINT', 'command_state': 'VARCHAR', 'route': 'VARCHAR', 'ordered_at': 'TIMESTAMPTZ'}"
)

# Every branch yields: class, txn, payment_id, statement fen, gasworks fen, count, line_no,
# out_trade_no, account_no, fee fen, near midnight, command state, route, ordered at.
_MATCH = """
WITH j AS MATERIALIZED (
    SELECT s.channel_txn_id AS s_txn, s.out_trade_no, s.account_no AS s_account, s.amount_fen AS s_fen, s.fee_fen, s.status, s.line_no,
           p.channel_txn_id AS p_txn, p.payment_id, p.amount_fen AS p_fen, p.state
    FROM s FULL OUTER JOIN p ON p.channel_txn_id = s.channel_txn_id
)
SELECT 'duplicate' AS klass, s_txn, NULL, sum(s_fen), NULL, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM s_paid GROUP BY s_txn HAVING count(*) > 1
UNION ALL
SELECT 'missing_notification', s_txn, NULL, any_value(s_fen), NULL, NULL, min(line_no), any_value(out_trade_no), any_value(s_account), NULL, NULL, NULL, NULL, NULL
    FROM j WHERE p_txn IS NULL AND status = 'paid' GROUP BY s_txn
UNION ALL
SELECT 'amount_mismatch', s_txn, payment_id, s_fen, p_fen, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM j WHERE status = 'paid' AND p_txn IS NOT NULL AND s_fen <> p_fen
UNION ALL
SELECT 'refunded_booked', s_txn, payment_id, s_fen, p_fen, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM j WHERE status = 'refunded' AND state IN ('booked', 'held', 'adjusted')
UNION ALL
SELECT 'refund_confirmed', s_txn, payment_id, s_fen, p_fen, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM j WHERE status = 'refunded' AND state = 'refund_requested'
UNION ALL
SELECT 'fee_mismatch', s_txn, NULL, s_fen, NULL, NULL, line_no, NULL, NULL, fee_fen, NULL, NULL, NULL, NULL
    FROM s_paid WHERE $fee_ppm > 0 AND fee_fen <> (s_fen * $fee_ppm + 500000) // 1000000
UNION ALL
SELECT 'unknown_payment', p.channel_txn_id, p.payment_id, NULL, p.amount_fen, NULL, NULL, NULL, NULL, NULL, p.paid_at >= $carry_from::TIMESTAMPTZ,
       NULL, NULL, NULL
    FROM p ANTI JOIN s ON s.channel_txn_id = p.channel_txn_id ANTI JOIN near ON near.channel_txn_id = p.channel_txn_id
    WHERE p.state IN ('booked', 'held', 'adjusted')
      AND ((p.paid_at >= $day_start::TIMESTAMPTZ AND p.paid_at < $day_end::TIMESTAMPTZ) OR p.channel_txn_id IN (SELECT unnest($carried::VARCHAR[])))
UNION ALL
SELECT 'not_delivered', p.channel_txn_id, p.payment_id, NULL, p.amount_fen, NULL, NULL, NULL, NULL, NULL, NULL, p.command_state, p.route,
       CAST(p.ordered_at AS VARCHAR)
    FROM p SEMI JOIN s ON s.channel_txn_id = p.channel_txn_id
    WHERE p.state = 'booked' AND p.command_id IS NOT NULL AND p.command_state NOT IN ('applied', 'cancelled') AND p.ordered_at < $overdue::TIMESTAMPTZ
UNION ALL
SELECT 'matched', NULL, NULL, NULL, NULL, count(DISTINCT s_txn), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM j WHERE status = 'paid' AND p_txn IS NOT NULL AND s_fen = p_fen
"""
_ORDER = " ORDER BY klass, 2, 3"


class DuckDbStatementMatcher:
    def read(self, format_: str, raw: bytes) -> ReadStatement:
        return read_statement(format_, raw)

    def match(self, lines_csv: Path, payments_csv: Path, near_csv: Path, *, channel: Channel, window: MatchWindow) -> Match:
        db = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "temp_directory": str(lines_csv.parent / "spill")})
        try:
            for table, path, columns in ((("s", lines_csv, _LINES)), ("p", payments_csv, _PAYMENTS), ("near", near_csv, "{'channel_txn_id': 'VARCHAR'}")):
                db.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv(?, header = true, auto_detect = false, columns = {columns})", [str(path)])
            db.execute("CREATE VIEW s_paid AS SELECT channel_txn_id AS s_txn, amount_fen AS s_fen, fee_fen, line_no FROM s WHERE status = 'paid'")
            rows = db.execute(
                f"SELECT * FROM ({_MATCH}){_ORDER}",
                {
                    "fee_ppm": channel.fee_ppm, "carry_from": window.carry_from.isoformat(), "day_start": window.day_start.isoformat(),
                    "day_end": window.day_end.isoformat(), "carried": sorted(window.carried_txns), "overdue": window.not_delivered_before.isoformat(),
                },
            ).fetchall()  # fmt: skip
        finally:
            db.close()
        return _discrepancies(rows, channel, window)


def _discrepancies(rows: list[tuple], channel: Channel, window: MatchWindow) -> Match:
    found: list[Discrepancy] = []
    unnotified: dict[str, tuple[str | None, str | None]] = {}
    matched = 0

    def add(klass: DiscrepancyClass, txn: str | None, payment_id: str | None, statement_fen: int | None, gasworks_fen: int | None, detail: str, state: DiscrepancyState = DiscrepancyState.OPEN) -> None:
        found.append(Discrepancy(None, None, klass, state, channel.id, txn, payment_id, statement_fen, gasworks_fen, detail, PROPOSED_ACTIONS[klass]))

    by_class: dict[str, list[tuple]] = {}
    for row in rows:
        by_class.setdefault(row[0], []).append(row)
    # The classes in the order the report has always listed them.
    for _, txn, _, total, _, n, *_ in by_class.get("duplicate", []):
        add(DiscrepancyClass.DUPLICATE, txn, None, int(total), None, f"listed {n} times as paid in the statement")
    for _, txn, _, amount, _, _, line_no, out_trade_no, account_no, *_ in by_class.get("missing_notification", []):
        add(DiscrepancyClass.MISSING_NOTIFICATION, txn, None, amount, None, f"line {line_no}: paid at the channel, never notified")
        unnotified[txn] = (out_trade_no, account_no)
    for _, txn, payment_id, s_fen, p_fen, *_ in by_class.get("amount_mismatch", []):
        add(DiscrepancyClass.AMOUNT_MISMATCH, txn, payment_id, s_fen, p_fen, f"the channel says {s_fen} fen, gasworks booked {p_fen} fen")
    for _, txn, payment_id, s_fen, p_fen, *_ in by_class.get("refunded_booked", []):
        add(DiscrepancyClass.STATUS_MISMATCH, txn, payment_id, s_fen, p_fen, f"refunded at the channel ({s_fen} fen), booked here")
    for _, txn, payment_id, s_fen, p_fen, *_ in by_class.get("refund_confirmed", []):
        add(DiscrepancyClass.STATUS_MISMATCH, txn, payment_id, s_fen, p_fen, f"the refund we requested ({s_fen} fen) is in the channel's statement", DiscrepancyState.REPAIRED)
    for _, txn, _, amount, _, _, line_no, _, _, fee, *_ in by_class.get("fee_mismatch", []):
        add(DiscrepancyClass.FEE_MISMATCH, txn, None, fee, channel.fee_fen(amount), f"line {line_no}: fee {fee} fen, agreed {channel.fee_fen(amount)} fen on {amount} fen")
    for _, txn, payment_id, _, amount, _, _, _, _, _, near_midnight, *_ in by_class.get("unknown_payment", []):
        if near_midnight and txn not in window.carried_txns:
            add(DiscrepancyClass.UNKNOWN_PAYMENT, txn, payment_id, None, amount, "paid just before midnight: looked for in the next day's statement", DiscrepancyState.CARRIED_OVER)
        else:
            add(DiscrepancyClass.UNKNOWN_PAYMENT, txn, payment_id, None, amount, "booked here, not in the channel's statement")
    for _, txn, payment_id, _, amount, _, _, _, _, _, _, command_state, route, ordered_at in by_class.get("not_delivered", []):
        add(DiscrepancyClass.NOT_DELIVERED, txn, payment_id, None, amount, f"{route} purchase {command_state} since {ordered_at[:16]}")
    for row in by_class.get("matched", []):
        matched = int(row[5])
    return Match(found, matched, unnotified)
