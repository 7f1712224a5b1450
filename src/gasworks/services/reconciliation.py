"""Three-way daily reconciliation: the channel's statement vs payments vs meters.

1. Import: the file is read whole (or refused with its line and reason), stored with every line in
   one transaction, and known by its content hash: importing the same file again does nothing.
2. Match, through the StatementMatcher port (DuckDB: one query over bulk CSV exports, only the
   discrepancies come back): statement lines vs the channel's payments on the channel transaction
   id, then amount, status and fee; payments of the day missing from the statement; purchases of
   matched payments not applied at their meters.
3. Repair what is safe to repair: a payment the channel collected but never notified is booked from
   the statement through the same exactly-once path (a late notification afterwards books nothing)
   and delivered like any purchase. Everything else is held for an operator, with a proposed action.
   A payment near midnight missing from the statement is carried over to the next day's file first.
"""

import hashlib
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from gasworks.domain.channels import Channel, ChannelKind, PaymentNotice
from gasworks.domain.errors import Conflict, GasworksError, InvalidInput, NotFound
from gasworks.domain.payments import PaymentState
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState
from gasworks.services.channels import require_channel
from gasworks.services.holds import confirm_refund
from gasworks.services.intake import AuditNote, accept_payment, payment_fen_max
from gasworks.services.payment_life_cycle import settle
from gasworks.services.statement_matching import MatchWindow
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
    with uow.statement_matcher.read(format_, raw) as statement, uow:  # refuses the whole file, with the line and the reason
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
            detail={"channel_id": channel_id, "date": statement_date.isoformat(), "sha256": sha256, "lines": statement.lines, "paid_total_fen": statement.paid_total_fen},
        )  # fmt: skip
        uow.commit()
        return Imported(file_id, True, statement.lines)


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
        matcher = uow.statement_matcher
    tz = ZoneInfo(timezone)
    day_start = datetime.combine(statement_file.statement_date, time(0), tz)
    day_end = day_start + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="gasworks-reconcile-") as work:
        lines_csv, payments_csv, near_csv = Path(work) / "lines.csv", Path(work) / "payments.csv", Path(work) / "near.csv"
        step("exporting")
        day = statement_file.statement_date
        exports: list[Callable[[UnitOfWork], object]] = [
            lambda uow: uow.statements.export_lines(file_id, lines_csv),
            lambda uow: uow.statements.export_neighbour_txns(channel.id, day - timedelta(days=PAYMENT_WINDOW_DAYS), day + timedelta(days=PAYMENT_WINDOW_DAYS), file_id, near_csv),
            lambda uow: uow.reconciliations.export_payments(channel.id, day_start - timedelta(days=PAYMENT_WINDOW_DAYS), day_end + timedelta(days=PAYMENT_WINDOW_DAYS), payments_csv),
        ]
        _export_concurrently(exports, uow_factory)
        step("matching")
        window = MatchWindow(
            day_start=day_start, day_end=day_end, carry_from=day_end - timedelta(seconds=CARRY_OVER_S),
            not_delivered_before=started - timedelta(seconds=NOT_DELIVERED_AFTER_S), carried_txns=frozenset(d.channel_txn_id for d in carried if d.channel_txn_id),
        )  # fmt: skip
        match = matcher.match(lines_csv, payments_csv, near_csv, channel=channel, window=window)
        found, matched, unnotified = match.found, match.matched, match.unnotified
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


def _export_concurrently(exports: list[Callable[[UnitOfWork], object]], uow_factory: Callable[[], UnitOfWork]) -> None:
    """Each export in a unit of work of its own, all at once: the database writes each CSV on its own
    core. Nothing is lost by not sharing a transaction: under READ COMMITTED each statement took its
    own snapshot anyway, and statement lines never change once imported."""

    def export(write: Callable[[UnitOfWork], object]) -> None:
        with uow_factory() as uow:
            write(uow)

    with ThreadPoolExecutor(len(exports), thread_name_prefix="reconcile-export") as pool:
        for _ in pool.map(export, exports):
            pass


def _report(uow: UnitOfWork, run: dict[str, Any], *, new: bool) -> RunReport:
    found = uow.reconciliations.discrepancies(run_id=run["id"], limit=10_000_000)
    return RunReport(run["id"], run["channel_id"], run["statement_date"], run["verdict"], run["matched"], run["totals"], found, new)


def _book_from_statement(d: Discrepancy, names: tuple[str | None, str | None], channel: Channel, uow_factory: Callable[[], UnitOfWork], file_id: int, actor: str) -> None:
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


def list_discrepancies(
    uow: UnitOfWork, *, state: DiscrepancyState | None, klass: DiscrepancyClass | None = None, channel_id: str | None = None, limit: int,
) -> list[Discrepancy]:  # fmt: skip
    """Discrepancies of every run, filtered, oldest first."""
    with uow:
        return uow.reconciliations.discrepancies(state=state, klass=klass, channel_id=channel_id, limit=limit)
