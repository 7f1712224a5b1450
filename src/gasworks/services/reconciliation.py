"""Three-way daily reconciliation: the channel's statement vs payments vs meters.

1. Import: the file is read whole (or refused with its line and reason), stored with every line in
   one transaction, and known by its content hash: importing the same file again does nothing.
2. Match, in DuckDB (the heavy join is SQL over CSV exports, not Python loops): statement lines vs
   the channel's payments on the channel transaction id, then amount, status and fee; payments of
   the day missing from the statement; purchases of matched payments not applied at their meters.
3. Repair what is safe to repair: a payment the channel collected but never notified is booked from
   the statement through the same exactly-once path (a late notification afterwards books nothing)
   and delivered like any purchase. Everything else is held for an operator, with a proposed action.
   A payment near midnight missing from the statement is carried over to the next day's file first.
"""

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import structlog

from gasworks.adapters.statements import read_statement
from gasworks.domain.channels import Channel, ChannelKind, PaymentNotice
from gasworks.domain.errors import Conflict, GasworksError, InvalidInput, NotFound
from gasworks.domain.payments import PaymentState
from gasworks.domain.statements import (
    PROPOSED_ACTIONS,
    Discrepancy,
    DiscrepancyClass,
    DiscrepancyState,
)
from gasworks.services.channels import require_channel
from gasworks.services.holds import confirm_refund
from gasworks.services.intake import AuditNote, accept_payment, payment_fen_max
from gasworks.services.payment_life_cycle import settle
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

FORMAT_OF_KIND = {ChannelKind.WECHATPAY_V3: "wechat-trade-bill", ChannelKind.ALIPAY: "alipay-business-bill"}
CARRY_OVER_S = 30 * 60  # a payment this close to midnight may sit in the next day's file
PAYMENT_WINDOW_DAYS = 2  # payments booked this many days either side can match the day's lines
NOT_DELIVERED_AFTER_S = 24 * 3600
MONEY_CLASSES = frozenset(set(DiscrepancyClass) - {DiscrepancyClass.NOT_DELIVERED})


def format_for(channel: Channel) -> str:
    return FORMAT_OF_KIND.get(channel.kind, "plain-csv")


@dataclass(frozen=True)
class Imported:
    file_id: int
    new: bool
    lines: int


def import_statement(*, channel_id: str, statement_date: date, filename: str, raw: bytes, uow: UnitOfWork, actor: str, format_: str | None = None) -> Imported:
    """All or nothing; the same content twice is one import."""
    sha256 = hashlib.sha256(raw).hexdigest()
    with uow:
        channel = require_channel(uow, channel_id)
        format_ = format_ or format_for(channel)
        existing = uow.statements.find(channel_id, statement_date, sha256)
        if existing is not None:
            return Imported(existing.id, False, existing.lines)
    statement = read_statement(format_, raw)  # refuses the whole file, with the line and the reason
    with uow:
        now = uow.clock.now()
        file_id = uow.statements.add(
            channel_id=channel_id, statement_date=statement_date, format_=format_, sha256=sha256, filename=filename,
            statement=statement, at=now, actor=actor,
        )  # fmt: skip
        if file_id is None:  # imported by someone else meanwhile
            existing = uow.statements.find(channel_id, statement_date, sha256)
            assert existing is not None
            return Imported(existing.id, False, existing.lines)
        uow.audit.append(
            at=now, actor=actor, action="statement.import", subject=f"statement:{file_id}",
            detail={"channel_id": channel_id, "date": statement_date.isoformat(), "sha256": sha256, "lines": len(statement.lines), "paid_total_fen": statement.paid_total_fen},
        )  # fmt: skip
        uow.commit()
        return Imported(file_id, True, len(statement.lines))


@dataclass(frozen=True)
class RunReport:
    run_id: int
    channel_id: str
    statement_date: date
    verdict: str  # clean, repaired (only repairs made), unclean (something held for an operator)
    matched: int
    totals: dict[str, dict[str, int]]
    discrepancies: list[Discrepancy]
    new: bool  # False when this file had been reconciled before: the first report is returned


def reconcile(*, file_id: int, uow_factory: Callable[[], UnitOfWork], actor: str, timezone: str = "Asia/Shanghai", progress: Callable[[str], None] | None = None) -> RunReport:
    step = progress or (lambda _: None)
    with uow_factory() as uow:
        started = uow.clock.now()
        statement_file = uow.statements.get(file_id)
        if statement_file is None:
            raise NotFound(f"no statement file {file_id}", code="STATEMENT_NOT_FOUND")
        previous = uow.reconciliations.run_for_file(file_id)
        if previous is not None:
            return _report(uow, previous, new=False)
        channel = require_channel(uow, statement_file.channel_id)
        carried = uow.reconciliations.carried_over(channel.id, statement_file.statement_date)
    tz = ZoneInfo(timezone)
    day_start = datetime.combine(statement_file.statement_date, time(0), tz)
    day_end = day_start + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="gasworks-reconcile-") as work:
        lines_csv, payments_csv, near_csv = Path(work) / "lines.csv", Path(work) / "payments.csv", Path(work) / "near.csv"
        step("exporting")
        with uow_factory() as uow:
            uow.statements.export_lines(file_id, lines_csv)
            day = statement_file.statement_date
            uow.statements.export_neighbour_txns(channel.id, day - timedelta(days=PAYMENT_WINDOW_DAYS), day + timedelta(days=PAYMENT_WINDOW_DAYS), file_id, near_csv)
            uow.reconciliations.export_payments(channel.id, day_start - timedelta(days=PAYMENT_WINDOW_DAYS), day_end + timedelta(days=PAYMENT_WINDOW_DAYS), payments_csv)
        step("matching")
        found, matched, unnotified = _match(lines_csv, payments_csv, near_csv, channel=channel, day_start=day_start, day_end=day_end, now=started, carried=carried)
    step("repairing")
    for discrepancy in found:
        if discrepancy.klass == DiscrepancyClass.MISSING_NOTIFICATION:
            _book_from_statement(discrepancy, unnotified[discrepancy.channel_txn_id or ""], channel, uow_factory, file_id, actor)
        elif discrepancy.klass == DiscrepancyClass.STATUS_MISMATCH and discrepancy.state == DiscrepancyState.REPAIRED:
            _confirm_refund_from_statement(discrepancy, uow_factory, file_id, actor)
    with uow_factory() as uow:
        now = uow.clock.now()
        for old in carried:
            resolved = [d for d in found if d.channel_txn_id == old.channel_txn_id]
            uow.reconciliations.settle(
                old.id or 0, state=DiscrepancyState.SUPERSEDED, at=now, by=actor,
                resolution="found in the next day's statement" if not resolved else "looked for in the next day's statement: see the new run",
            )  # fmt: skip
        totals: dict[str, dict[str, int]] = {}
        for d in found:
            entry = totals.setdefault(d.klass.value, {"count": 0, "amount_fen": 0})
            entry["count"] += 1
            entry["amount_fen"] += d.statement_amount_fen or d.gasworks_amount_fen or 0
        held = [d for d in found if d.state == DiscrepancyState.OPEN and d.klass in MONEY_CLASSES]
        repaired = [d for d in found if d.state == DiscrepancyState.REPAIRED]
        verdict = "unclean" if held else "repaired" if repaired else "clean"
        run_id = uow.reconciliations.add_run(
            channel_id=channel.id, statement_date=statement_file.statement_date, file_id=file_id, started_at=started, finished_at=now,
            actor=actor, verdict=verdict, totals=totals, matched=matched,
        )  # fmt: skip
        uow.reconciliations.add_discrepancies(run_id, found)
        uow.audit.append(
            at=now, actor=actor, action="reconciliation.run", subject=f"reconciliation:{run_id}",
            detail={"channel_id": channel.id, "date": statement_file.statement_date.isoformat(), "verdict": verdict, "totals": totals},
        )  # fmt: skip
        uow.commit()
        log.info("reconciled", channel_id=channel.id, date=statement_file.statement_date.isoformat(), verdict=verdict, matched=matched, found=len(found))
        run = uow.reconciliations.get_run(run_id)
        assert run is not None
        return _report(uow, run, new=True)


def _report(uow: UnitOfWork, run: dict, *, new: bool) -> RunReport:
    found = uow.reconciliations.discrepancies(run_id=run["id"], limit=10_000_000)
    return RunReport(run["id"], run["channel_id"], run["statement_date"], run["verdict"], run["matched"], run["totals"], found, new)


def _match(
    lines_csv: Path, payments_csv: Path, near_csv: Path, *, channel: Channel, day_start: datetime, day_end: datetime, now: datetime, carried: list[Discrepancy]
) -> tuple[list[Discrepancy], int, dict[str, tuple[str | None, str | None]]]:
    """The discrepancies, the count matched, and what names each unnotified payment: (out_trade_no, account_no)."""
    db = duckdb.connect()
    db.execute(
        "CREATE TABLE s AS SELECT * FROM read_csv(?, header=true, columns={'channel_txn_id':'VARCHAR','out_trade_no':'VARCHAR','account_no':'VARCHAR',"
        "'amount_fen':'BIGINT','fee_fen':'BIGINT','status':'VARCHAR','line_no':'INTEGER'})",
        [str(lines_csv)],
    )
    db.execute(
        "CREATE TABLE p AS SELECT * FROM read_csv(?, header=true, columns={'payment_id':'VARCHAR','channel_txn_id':'VARCHAR','amount_fen':'BIGINT',"
        "'state':'VARCHAR','account_no':'VARCHAR','paid_at':'TIMESTAMPTZ','command_id':'BIGINT','command_state':'VARCHAR','route':'VARCHAR','ordered_at':'TIMESTAMPTZ'})",
        [str(payments_csv)],
    )
    db.execute("CREATE TABLE near AS SELECT * FROM read_csv(?, header=true, columns={'channel_txn_id':'VARCHAR'})", [str(near_csv)])
    found: list[Discrepancy] = []
    unnotified: dict[str, tuple[str | None, str | None]] = {}

    def add(klass: DiscrepancyClass, txn: str | None, payment_id: str | None, statement_fen: int | None, gasworks_fen: int | None, detail: str, state: DiscrepancyState = DiscrepancyState.OPEN) -> None:
        found.append(Discrepancy(None, None, klass, state, channel.id, txn, payment_id, statement_fen, gasworks_fen, detail, PROPOSED_ACTIONS[klass]))

    for txn, n, total in db.execute("SELECT channel_txn_id, count(*), sum(amount_fen) FROM s WHERE status = 'paid' GROUP BY 1 HAVING count(*) > 1").fetchall():
        add(DiscrepancyClass.DUPLICATE, txn, None, total, None, f"listed {n} times as paid in the statement")
    for txn, out_trade_no, account_no, amount, line_no in db.execute(
        "SELECT s.channel_txn_id, any_value(s.out_trade_no), any_value(s.account_no), any_value(s.amount_fen), min(s.line_no) FROM s "
        "ANTI JOIN p ON p.channel_txn_id = s.channel_txn_id WHERE s.status = 'paid' GROUP BY 1"
    ).fetchall():
        add(DiscrepancyClass.MISSING_NOTIFICATION, txn, None, amount, None, f"line {line_no}: paid at the channel, never notified")
        unnotified[txn] = (out_trade_no, account_no)
    for txn, payment_id, s_fen, p_fen in db.execute(
        "SELECT s.channel_txn_id, p.payment_id, s.amount_fen, p.amount_fen FROM s JOIN p USING (channel_txn_id) WHERE s.status = 'paid' AND s.amount_fen <> p.amount_fen"
    ).fetchall():
        add(DiscrepancyClass.AMOUNT_MISMATCH, txn, payment_id, s_fen, p_fen, f"the channel says {s_fen} fen, gasworks booked {p_fen} fen")
    for txn, payment_id, s_fen, p_fen in db.execute(
        "SELECT s.channel_txn_id, p.payment_id, s.amount_fen, p.amount_fen FROM s JOIN p USING (channel_txn_id) WHERE s.status = 'refunded' AND p.state IN ('booked', 'held', 'adjusted')"
    ).fetchall():
        add(DiscrepancyClass.STATUS_MISMATCH, txn, payment_id, s_fen, p_fen, f"refunded at the channel ({s_fen} fen), booked here")
    for txn, payment_id, s_fen, p_fen in db.execute(
        "SELECT s.channel_txn_id, p.payment_id, s.amount_fen, p.amount_fen FROM s JOIN p USING (channel_txn_id) WHERE s.status = 'refunded' AND p.state = 'refund_requested'"
    ).fetchall():
        add(DiscrepancyClass.STATUS_MISMATCH, txn, payment_id, s_fen, p_fen, f"the refund we requested ({s_fen} fen) is in the channel's statement", DiscrepancyState.REPAIRED)
    if channel.fee_ppm:
        for txn, line_no, amount, fee in db.execute(
            "SELECT channel_txn_id, line_no, amount_fen, fee_fen FROM s WHERE status = 'paid' AND fee_fen <> (amount_fen * ? + 500000) // 1000000", [channel.fee_ppm]
        ).fetchall():
            add(DiscrepancyClass.FEE_MISMATCH, txn, None, fee, channel.fee_fen(amount), f"line {line_no}: fee {fee} fen, agreed {channel.fee_fen(amount)} fen on {amount} fen")
    carry_from = day_end - timedelta(seconds=CARRY_OVER_S)
    carried_txns = {d.channel_txn_id for d in carried}
    # Times go into DuckDB as ISO text and come back as flags or text: no timezone library needed.
    for payment_id, txn, amount, near_midnight in db.execute(
        "SELECT p.payment_id, p.channel_txn_id, p.amount_fen, p.paid_at >= ?::TIMESTAMPTZ FROM p ANTI JOIN s ON s.channel_txn_id = p.channel_txn_id "
        "ANTI JOIN near ON near.channel_txn_id = p.channel_txn_id "
        "WHERE p.state IN ('booked', 'held', 'adjusted') AND ((p.paid_at >= ?::TIMESTAMPTZ AND p.paid_at < ?::TIMESTAMPTZ) OR p.channel_txn_id IN (SELECT unnest(?::VARCHAR[])))",
        [carry_from.isoformat(), day_start.isoformat(), day_end.isoformat(), sorted(t for t in carried_txns if t)],
    ).fetchall():
        if near_midnight and txn not in carried_txns:
            add(DiscrepancyClass.UNKNOWN_PAYMENT, txn, payment_id, None, amount, "paid just before midnight: looked for in the next day's statement", DiscrepancyState.CARRIED_OVER)
        else:
            add(DiscrepancyClass.UNKNOWN_PAYMENT, txn, payment_id, None, amount, "booked here, not in the channel's statement")
    for payment_id, txn, amount, command_state, route, ordered_at in db.execute(
        "SELECT p.payment_id, p.channel_txn_id, p.amount_fen, p.command_state, p.route, CAST(p.ordered_at AS VARCHAR) FROM p SEMI JOIN s ON s.channel_txn_id = p.channel_txn_id "
        "WHERE p.state = 'booked' AND p.command_id IS NOT NULL AND p.command_state NOT IN ('applied', 'cancelled') AND p.ordered_at < ?::TIMESTAMPTZ",
        [(now - timedelta(seconds=NOT_DELIVERED_AFTER_S)).isoformat()],
    ).fetchall():
        add(DiscrepancyClass.NOT_DELIVERED, txn, payment_id, None, amount, f"{route} purchase {command_state} since {ordered_at[:16]}")
    matched = db.execute("SELECT count(DISTINCT s.channel_txn_id) FROM s JOIN p USING (channel_txn_id) WHERE s.status = 'paid' AND s.amount_fen = p.amount_fen").fetchone()[0]
    db.close()
    return found, int(matched), unnotified


def _book_from_statement(
    d: Discrepancy, names: tuple[str | None, str | None], channel: Channel, uow_factory: Callable[[], UnitOfWork], file_id: int, actor: str
) -> None:
    """The repair for a lost notification: the statement line becomes the notification."""
    out_trade_no, account_no = names
    assert d.channel_txn_id is not None and d.statement_amount_fen is not None
    notice = PaymentNotice(
        channel_id=channel.id, channel_txn_id=d.channel_txn_id, amount_fen=d.statement_amount_fen, paid_at=None,
        out_trade_no=out_trade_no or None, account_no=None if out_trade_no else (account_no or None), method="statement",
    )  # fmt: skip
    audit = AuditNote(actor, "payment.booked_from_statement", {"channel_id": channel.id, "channel_txn_id": d.channel_txn_id, "statement_file": file_id})
    try:
        taken = accept_payment(notice, uow_factory(), audit=audit)
    except GasworksError as refused:  # e.g. the id is known here with other content: a person must look
        d.detail += f"; not booked: {refused.code}: {refused.message}"
        return
    d.payment_id = taken.payment_id
    d.detail += f"; booked from statement file {file_id} as {taken.payment_id} ({taken.state})"
    if taken.state == PaymentState.HELD:  # in suspense, not placed: the day is not clean until the hold is decided
        d.detail += f" for {taken.hold_reason}: decide the hold"
        return
    d.state = DiscrepancyState.REPAIRED


def _confirm_refund_from_statement(d: Discrepancy, uow_factory: Callable[[], UnitOfWork], file_id: int, actor: str) -> None:
    """A refund we requested shows in the channel's statement: that is the channel's confirmation."""
    try:
        confirm_refund(d.payment_id or "", evidence=f"refund line in statement file {file_id}", uow=uow_factory(), actor=actor, refund_fen=d.statement_amount_fen)
        d.detail += "; refund confirmed"
    except GasworksError as refused:  # confirmed meanwhile (its notification, another file), or not the amount requested
        d.state = DiscrepancyState.OPEN if refused.code == "PARTIAL_REFUND" else d.state
        d.detail += f"; {refused.code}: {refused.message}"


# ---- operators' decisions ----------------------------------------------------------------------


class Decision:
    REVERSE = "reverse"  # the channel did not collect it, or refunded it: take the booking back
    ADJUST = "adjust"  # book the difference to the channel's amount
    ACCEPT = "accept"  # explained; nothing to book


ALLOWED = {
    DiscrepancyClass.UNKNOWN_PAYMENT: {Decision.REVERSE, Decision.ACCEPT},
    DiscrepancyClass.STATUS_MISMATCH: {Decision.REVERSE, Decision.ACCEPT},
    DiscrepancyClass.AMOUNT_MISMATCH: {Decision.ADJUST, Decision.ACCEPT},
    DiscrepancyClass.DUPLICATE: {Decision.ACCEPT},
    DiscrepancyClass.MISSING_NOTIFICATION: {Decision.ACCEPT},  # one that could not be booked, or was held: once that is decided
    DiscrepancyClass.FEE_MISMATCH: {Decision.ACCEPT},
    DiscrepancyClass.NOT_DELIVERED: {Decision.ACCEPT},
}


def decide(discrepancy_id: int, decision: str, reason: str, uow: UnitOfWork, *, actor: str) -> Discrepancy:
    """An operator's decision: a ledger transaction where money moves, always an audit record."""
    if not reason.strip():
        raise InvalidInput("say why", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        d = uow.reconciliations.get_discrepancy(discrepancy_id)
        if d is None:
            raise NotFound(f"no discrepancy {discrepancy_id}", code="DISCREPANCY_NOT_FOUND")
        if d.state != DiscrepancyState.OPEN:
            raise Conflict(f"discrepancy {discrepancy_id} is {d.state}", code="DISCREPANCY_NOT_OPEN")
        if decision not in ALLOWED.get(d.klass, set()):
            raise InvalidInput(f"{d.klass} takes {', '.join(sorted(ALLOWED.get(d.klass, set())))}", code="DECISION_NOT_ALLOWED")
        booked = None
        if decision in (Decision.REVERSE, Decision.ADJUST):
            payment = uow.payments.get(d.payment_id or "")
            if payment is None:
                raise Conflict("the discrepancy names no payment to correct", code="NO_PAYMENT")
            why = f"discrepancy {d.id} ({d.klass}): {reason.strip()[:200]}"
            detail = {"discrepancy": d.id, "reason": reason.strip()[:200]}
            if decision == Decision.REVERSE:
                # Refunded at the channel: an external refund. Never collected: a reversal. Either
                # way gas already bought stays bought; the balance may go below zero (arrears).
                target = PaymentState.REFUNDED if d.klass == DiscrepancyClass.STATUS_MISMATCH else PaymentState.REVERSED
                holds_fen = uow.ledger.payment_net_fen(payment.id)
                if target == PaymentState.REFUNDED and d.statement_amount_fen != holds_fen:
                    raise Conflict(f"the channel refunded {d.statement_amount_fen} fen of {holds_fen} fen: a partial refund is not a reversal; accept it and settle by hand", code="PARTIAL_REFUND")
                booked = settle(uow, payment, target, at=now, note=why, actor=actor, action=f"payment.{target.value}", detail=detail)
            else:
                fen_max = payment_fen_max(uow, uow.payment_ceiling, payment.channel_id, payment.account_no)
                if (d.statement_amount_fen or 0) > fen_max:
                    raise InvalidInput(f"the channel's {d.statement_amount_fen} fen is above the payment ceiling of {fen_max} fen: not adjusted", code="AMOUNT_ABOVE_LIMIT")
                difference = (d.statement_amount_fen or 0) - uow.ledger.payment_net_fen(payment.id)
                if difference == 0:
                    raise Conflict("no difference to adjust", code="NOTHING_TO_ADJUST")
                booked = settle(uow, payment, PaymentState.ADJUSTED, at=now, note=why, actor=actor, action="payment.adjusted", detail=detail, amount_fen=difference)
        resolution = f"{decision}: {reason.strip()[:200]}" + (f" (ledger transaction {booked})" if booked else "")
        if not uow.reconciliations.settle(discrepancy_id, state=DiscrepancyState.RESOLVED, at=now, by=actor, resolution=resolution, from_state=DiscrepancyState.OPEN):
            raise Conflict(f"discrepancy {discrepancy_id} was decided meanwhile", code="DISCREPANCY_NOT_OPEN")
        uow.audit.append(
            at=now, actor=actor, action=f"discrepancy.{decision}", subject=f"discrepancy:{discrepancy_id}",
            detail={"class": d.klass.value, "payment_id": d.payment_id, "reason": reason.strip()[:200], "ledger_transaction": booked},
        )  # fmt: skip
        uow.commit()
        d.state, d.resolution, d.resolved_by, d.resolved_at = DiscrepancyState.RESOLVED, resolution, actor, now
        return d


REPORT_COLUMNS = (
    "id", "class", "state", "channel_id", "channel_txn_id", "payment_id", "statement_amount_fen", "gasworks_amount_fen", "detail", "proposed_action", "resolution",
)  # fmt: skip


def report_csv(report: RunReport) -> str:
    """The run as CSV: one line per discrepancy, for spreadsheets and auditors."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(REPORT_COLUMNS)
    for d in report.discrepancies:
        writer.writerow(
            (d.id, d.klass.value, d.state.value, d.channel_id, d.channel_txn_id or "", d.payment_id or "", "" if d.statement_amount_fen is None else d.statement_amount_fen,
             "" if d.gasworks_amount_fen is None else d.gasworks_amount_fen, d.detail, d.proposed_action, d.resolution or "")
        )  # fmt: skip
    return out.getvalue()


def get_report(run_id: int, uow: UnitOfWork) -> RunReport:
    with uow:
        run = uow.reconciliations.get_run(run_id)
        if run is None:
            raise NotFound(f"no reconciliation run {run_id}", code="RUN_NOT_FOUND")
        return _report(uow, run, new=False)
