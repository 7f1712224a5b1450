"""Calling the channels: the worker's three jobs, each a use case over the `ChannelGateway` port.

1. **Order recovery.** An order still open `query_after_s` after it was created is asked about,
   then again with capped exponential backoff until the channel answers for good: paid → booked
   through the exactly-once path (a notification arriving too books nothing more); closed → the
   order is closed (GET /v1/orders/{no} and the resident's order page say so).
2. **Refunds.** A payment in `refund_requested` gets the channel's refund call, with a refund
   number that is the same on every try (`refund_number`), so a retry is the same refund. It stays
   `refund_requested` until the channel confirms (its REFUND.SUCCESS notification, or our query):
   only then does `holds.confirm_refund` move the money out of refunds in flight. CLOSED or
   ABNORMAL: an alert for the operator, the money stays where it is.
3. **Statements.** After `statement_hour` (Beijing time) each channel's previous day is fetched,
   checked (WeChat Pay: the SHA1 of the bill), imported and reconciled; not imported by
   `statement_late_hour`: an alert; a hash mismatch: an alert.

Every job's tries and next try live in the database (`uow.outbound`), so a restarted worker goes
on where the last one stopped. Failures back off up to a cap and are never silent: the
`tries_before_alert`-th failure raises CHANNEL_CALL_FAILING naming the job.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from gasworks.domain.delivery import AlertKind
from gasworks.domain.errors import Conflict, GasworksError, InvalidInput
from gasworks.domain.outbound import Backoff, JobKind, JobState, OutboundJob
from gasworks.domain.payments import Payment, PaymentOrder, PaymentState
from gasworks.services import reconciliation
from gasworks.services.channel_gateway import ChannelGateway, GatewayError, OrderStatus, RefundAnswer, RefundRequest, RefundState
from gasworks.services.channels import require_channel
from gasworks.services.holds import confirm_refund
from gasworks.services.intake import AuditNote, accept_payment
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

ACTOR = "channel-jobs"
GatewayFor = Callable[[str], ChannelGateway | None]  # a channel id → its gateway, None when not configured


@dataclass(frozen=True)
class OutboundPolicy:
    query_after_s: int = 600  # give the notification ten minutes first
    query_window_s: int = 2 * 24 * 3600  # older open orders are left to the statement
    order_backoff: Backoff = Backoff(first_s=60, cap_s=3600, tries_before_alert=8)
    refund_backoff: Backoff = Backoff(first_s=60, cap_s=3600, tries_before_alert=6)
    statement_backoff: Backoff = Backoff(first_s=300, cap_s=1800, tries_before_alert=6)
    statement_hour: int = 10  # Beijing time: channels publish the previous day's bill by about then
    statement_late_hour: int = 12  # not imported by then: STATEMENT_LATE
    batch_max: int = 100  # orders or refunds per channel per pass
    timezone: str = "Asia/Shanghai"


@dataclass
class PassReport:
    booked: int = 0
    closed: int = 0
    refunds_requested: int = 0
    refunds_confirmed: int = 0
    refunds_failed: int = 0
    statements_imported: int = 0
    failures: int = 0
    alerts: list[str] = field(default_factory=list)


def refund_number(payment: Payment) -> str:
    """Ours, stable per payment: asking again with it is the same refund at the channel.
    WeChat Pay: 1-64 of [A-Za-z0-9_-|*@]; Alipay's out_request_no: up to 64."""
    return "GWR" + payment.id.removeprefix("pay_")


# ---- 1. order recovery ---------------------------------------------------------------------------


def recover_orders(uow_factory: Callable[[], UnitOfWork], gateway_for: GatewayFor, policy: OutboundPolicy, report: PassReport | None = None) -> PassReport:
    report = report or PassReport()
    with uow_factory() as uow:
        now = uow.clock.now()
        due: list[PaymentOrder] = []
        for channel_id in uow.outbound.gateway_channels():
            channel = uow.channels.get(channel_id)
            if channel is None or not channel.kind.uses_merchant_orders:
                continue
            after, before = now - timedelta(seconds=policy.query_window_s), now - timedelta(seconds=policy.query_after_s)
            due += uow.outbound.open_orders_due(channel_id, after, before, now, policy.batch_max)
    for order in due:
        gateway = gateway_for(order.channel_id)
        if gateway is not None:
            _ask_about_order(order, gateway, uow_factory, policy, report)
    return report


def _ask_about_order(order: PaymentOrder, gateway: ChannelGateway, uow_factory: Callable[[], UnitOfWork], policy: OutboundPolicy, report: PassReport) -> None:
    subject = order.out_trade_no
    try:
        answer = gateway.query_order(order.out_trade_no)
    except GatewayError as error:
        _failed(uow_factory, JobKind.ORDER_QUERY, subject, order.channel_id, f"{error.code}: {error.message}", policy.order_backoff, report)
        return
    if answer.status in (OrderStatus.PAID, OrderStatus.REFUNDED) and answer.notice is not None:
        audit = AuditNote(ACTOR, "payment.recovered", {"channel_id": order.channel_id, "out_trade_no": subject, "channel_txn_id": answer.notice.channel_txn_id})
        try:
            taken = accept_payment(answer.notice, uow_factory(), audit=audit)
        except GasworksError as refused:  # e.g. the transaction id is known with other content: a person looks
            _failed(uow_factory, JobKind.ORDER_QUERY, subject, order.channel_id, f"{refused.code}: {refused.message}", policy.order_backoff, report)
            return
        outcome = f"{answer.status}: payment {taken.payment_id} {'was already booked' if taken.duplicate else 'booked from the query'}"
        if not taken.duplicate:
            report.booked += 1
            log.warning("payment_recovered_by_query", channel_id=order.channel_id, out_trade_no=subject, payment_id=taken.payment_id)
        _finished(uow_factory, JobKind.ORDER_QUERY, subject, order.channel_id, outcome)
    elif answer.status == OrderStatus.CLOSED:
        with uow_factory() as uow:
            now = uow.clock.now()
            if uow.outbound.close_order(subject):
                uow.audit.append(at=now, actor=ACTOR, action="order.closed", subject=f"order:{subject}", detail={"channel_id": order.channel_id, "why": "closed unpaid at the channel"})
                report.closed += 1
            _save(uow, _job(uow, JobKind.ORDER_QUERY, subject, order.channel_id, now), now, finish="closed unpaid at the channel")
            uow.commit()
    else:  # not paid yet, or never heard of: ask again later, less and less often
        _failed(uow_factory, JobKind.ORDER_QUERY, subject, order.channel_id, f"{answer.status}", policy.order_backoff, report, alert=False)


# ---- 2. refunds ----------------------------------------------------------------------------------


def advance_refunds(uow_factory: Callable[[], UnitOfWork], gateway_for: GatewayFor, policy: OutboundPolicy, report: PassReport | None = None) -> PassReport:
    report = report or PassReport()
    with uow_factory() as uow:
        now = uow.clock.now()
        configured = set(uow.outbound.gateway_channels())
        waiting = [p for p in uow.payments.list_in_state(PaymentState.REFUND_REQUESTED, policy.batch_max * 4) if p.channel_id in configured]
        due = []
        for payment in waiting:
            job = uow.outbound.job(JobKind.REFUND, payment.id)
            if job is None or job.is_due(now):
                due.append((payment, uow.ledger.payment_net_fen(payment.id), job.step if job else ""))
    for payment, holds_fen, step in due[: policy.batch_max]:
        gateway = gateway_for(payment.channel_id)
        if gateway is not None:
            _advance_refund(payment, holds_fen, step, gateway, uow_factory, policy, report)
    return report


def _advance_refund(payment: Payment, holds_fen: int, step: str, gateway: ChannelGateway, uow_factory: Callable[[], UnitOfWork], policy: OutboundPolicy, report: PassReport) -> None:
    refund_no = refund_number(payment)
    requested = payment.last_event(PaymentState.REFUND_REQUESTED)
    reason = (requested.note if requested else "") or "refund"
    try:
        if step == "requested":
            answer = gateway.refund_status(refund_no, out_trade_no=payment.out_trade_no)
        else:
            answer = gateway.refund(RefundRequest(refund_no, payment.out_trade_no or "", payment.channel_txn_id, holds_fen, payment.amount_fen, reason[:80]))
            report.refunds_requested += 1
    except GatewayError as error:
        if not error.retryable:  # our request is wrong for this channel: asking again will not help
            _alert(uow_factory, AlertKind.CHANNEL_CALL_FAILING, f"{JobKind.REFUND}:{payment.id}", f"{payment.channel_id} refused the refund call: {error.code}: {error.message}", report)
            _finished(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, f"{error.code}: {error.message}", gave_up=True)
        elif error.code == "REFUND_NOT_FOUND":  # asked for status of a refund the channel never took: request it (same number)
            _failed(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, f"{error.code}: {error.message}", policy.refund_backoff, report, step="")
        else:
            _failed(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, f"{error.code}: {error.message}", policy.refund_backoff, report, step=step)
        return
    _take_refund_answer(payment, answer, uow_factory, policy, report)


def _take_refund_answer(payment: Payment, answer: RefundAnswer, uow_factory: Callable[[], UnitOfWork], policy: OutboundPolicy, report: PassReport) -> None:
    said = f"refund {answer.refund_no} {answer.state} (channel id {answer.channel_refund_id})"
    if answer.state == RefundState.SUCCESS:
        try:
            confirm_refund(payment.id, evidence=f"{said}, by query", uow=uow_factory(), actor=ACTOR, refund_fen=answer.refund_fen)
            report.refunds_confirmed += 1
        except Conflict as refused:
            if refused.code != "PAYMENT_ALREADY_REFUNDED":  # partial, or decided otherwise meanwhile: a person decides
                _alert(uow_factory, AlertKind.REFUND_NOT_PAID, f"payment:{payment.id}", f"{said}, not confirmed here: {refused.code}: {refused.message}", report)
                _finished(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, f"{said}; {refused.code}", gave_up=True)
                return
        _finished(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, said)
    elif answer.state in (RefundState.CLOSED, RefundState.ABNORMAL):
        report.refunds_failed += 1
        why = "closed the refund" if answer.state == RefundState.CLOSED else "could not pay the refund back (ABNORMAL: e.g. the card was cancelled)"
        _alert(uow_factory, AlertKind.REFUND_NOT_PAID, f"payment:{payment.id}", f"{payment.channel_id} {why}; the money stays in refunds in flight until an operator decides", report)
        _finished(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, said, gave_up=True)
    else:  # processing at the channel (a bank card can take days): ask again, less often; not a failure
        _failed(uow_factory, JobKind.REFUND, payment.id, payment.channel_id, said, policy.refund_backoff, report, step="requested", alert=False)


# ---- 3. statements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementFetched:
    file_id: int
    new: bool
    lines: int
    checked: str
    report: reconciliation.RunReport


def fetch_statement(channel_id: str, day: date, gateway: ChannelGateway, uow_factory: Callable[[], UnitOfWork], *, actor: str, timezone: str) -> StatementFetched:
    """Fetch one channel's statement for a day, check it, import it (once) and reconcile it.
    Raises GatewayError when the channel cannot give a trustworthy file."""
    fetched = gateway.fetch_statement(day)
    imported = reconciliation.import_statement(channel_id=channel_id, statement_date=day, filename=fetched.filename, raw=fetched.content, uow=uow_factory(), actor=actor)
    with uow_factory() as uow:
        uow.audit.append(
            at=uow.clock.now(), actor=actor, action="statement.fetched", subject=f"statement:{imported.file_id}",
            detail={"channel_id": channel_id, "date": day.isoformat(), "checked": fetched.checked, "bytes": len(fetched.content), "new": imported.new},
        )  # fmt: skip
        uow.commit()
    run = reconciliation.reconcile(file_id=imported.file_id, uow_factory=uow_factory, actor=actor, timezone=timezone)
    return StatementFetched(imported.file_id, imported.new, imported.lines, fetched.checked, run)


def fetch_due_statements(uow_factory: Callable[[], UnitOfWork], gateway_for: GatewayFor, policy: OutboundPolicy, report: PassReport | None = None) -> PassReport:
    """Each configured channel's previous day, once, after `statement_hour` Beijing time."""
    report = report or PassReport()
    tz = ZoneInfo(policy.timezone)
    with uow_factory() as uow:
        now = uow.clock.now()
        local = now.astimezone(tz)
        if local.hour < policy.statement_hour:
            return report
        day = local.date() - timedelta(days=1)
        due = []
        for channel_id in uow.outbound.gateway_channels():
            job = _job(uow, JobKind.STATEMENT, f"{channel_id}:{day.isoformat()}", channel_id, now)
            if job.is_due(now):
                due.append(job)
    for job in due:
        gateway = gateway_for(job.channel_id)
        if gateway is None:
            continue
        try:
            fetched = fetch_statement(job.channel_id, day, gateway, uow_factory, actor=ACTOR, timezone=policy.timezone)
        except GatewayError as error:
            if error.code == "STATEMENT_HASH_MISMATCH":
                _alert(uow_factory, AlertKind.STATEMENT_HASH_MISMATCH, f"statement:{job.subject}", f"{error.message}; not imported, fetched again later", report)
            _failed(uow_factory, JobKind.STATEMENT, job.subject, job.channel_id, f"{error.code}: {error.message}", policy.statement_backoff, report)
            continue
        except GasworksError as refused:  # the file itself is refused by its reader: a person looks at it
            _alert(uow_factory, AlertKind.CHANNEL_CALL_FAILING, f"statement:{job.subject}", f"statement refused: {refused.code}: {refused.message}", report)
            _finished(uow_factory, JobKind.STATEMENT, job.subject, job.channel_id, f"{refused.code}: {refused.message}", gave_up=True)
            continue
        report.statements_imported += 1
        with uow_factory() as uow:
            uow.alerts.clear(kind=AlertKind.STATEMENT_LATE, subject=f"statement:{job.subject}", at=uow.clock.now(), resolved_by=ACTOR, resolution=f"imported as file {fetched.file_id}")
            uow.commit()
        _finished(uow_factory, JobKind.STATEMENT, job.subject, job.channel_id, f"file {fetched.file_id}, {fetched.lines} lines, {fetched.checked}; verdict {fetched.report.verdict}")
    if local.hour >= policy.statement_late_hour:
        _alert_late_statements(uow_factory, day, policy, report)
    return report


def _alert_late_statements(uow_factory: Callable[[], UnitOfWork], day: date, policy: OutboundPolicy, report: PassReport) -> None:
    with uow_factory() as uow:
        now = uow.clock.now()
        for channel_id in uow.outbound.gateway_channels():
            job = _job(uow, JobKind.STATEMENT, f"{channel_id}:{day.isoformat()}", channel_id, now)
            if job.state == JobState.DONE:
                continue
            why = f"{channel_id}'s statement for {day} is not imported by {policy.statement_late_hour}:00 Beijing time; last: {job.last_outcome or 'not asked yet'}"
            if uow.alerts.raise_once(kind=AlertKind.STATEMENT_LATE, subject=f"statement:{job.subject}", reason=why, at=now):
                report.alerts.append(f"{AlertKind.STATEMENT_LATE}:{job.subject}")
        uow.commit()


# ---- job bookkeeping -----------------------------------------------------------------------------


def _job(uow: UnitOfWork, kind: JobKind, subject: str, channel_id: str, now: datetime) -> OutboundJob:
    return uow.outbound.job(kind, subject, lock=True) or OutboundJob.new(kind, subject, channel_id, now)


def _save(uow: UnitOfWork, job: OutboundJob, now: datetime, *, finish: str | None = None, gave_up: bool = False) -> None:
    if finish is not None:
        job.finish(finish, gave_up=gave_up)
    uow.outbound.save_job(job, now)


def _finished(uow_factory: Callable[[], UnitOfWork], kind: JobKind, subject: str, channel_id: str, outcome: str, *, gave_up: bool = False) -> None:
    with uow_factory() as uow:
        now = uow.clock.now()
        _save(uow, _job(uow, kind, subject, channel_id, now), now, finish=outcome, gave_up=gave_up)
        uow.commit()


def _failed(
    uow_factory: Callable[[], UnitOfWork], kind: JobKind, subject: str, channel_id: str, outcome: str, backoff: Backoff, report: PassReport,
    *, step: str | None = None, alert: bool = True,
) -> None:  # fmt: skip
    """One more try that did not finish the job: next try after the backoff; the N-th raises an alert."""
    with uow_factory() as uow:
        now = uow.clock.now()
        job = _job(uow, kind, subject, channel_id, now)
        if step is not None:
            job.step = step
        alert_now = job.tried(outcome, now, backoff)
        uow.outbound.save_job(job, now)
        if alert and alert_now and uow.alerts.raise_once(
            kind=AlertKind.CHANNEL_CALL_FAILING, subject=f"{kind}:{subject}", reason=f"{channel_id}: {job.tries} tries, last: {outcome}; still retrying every {backoff.cap_s} s at most", at=now
        ):  # fmt: skip
            report.alerts.append(f"{AlertKind.CHANNEL_CALL_FAILING}:{kind}:{subject}")
        uow.commit()
    if alert:
        report.failures += 1
    log.info("channel_job_not_done", kind=str(kind), subject=subject, channel_id=channel_id, outcome=outcome[:200])


def _alert(uow_factory: Callable[[], UnitOfWork], kind: AlertKind, subject: str, reason: str, report: PassReport) -> None:
    with uow_factory() as uow:
        if uow.alerts.raise_once(kind=kind, subject=subject, reason=reason, at=uow.clock.now()):
            report.alerts.append(f"{kind}:{subject}")
        uow.commit()
    log.warning("channel_job_alert", kind=str(kind), subject=subject, reason=reason[:200])


# ---- configuration -------------------------------------------------------------------------------

GATEWAY_URL_CHARS_MAX = 300


def configure_gateway(channel_id: str, base_url: str, *, uow: UnitOfWork, actor: str) -> None:
    """Where the channel's API is (production, its sandbox, or a local stub). Audited."""
    base_url = base_url.strip().rstrip("/")
    if not base_url.startswith(("https://", "http://")) or not 8 < len(base_url) <= GATEWAY_URL_CHARS_MAX or any(c.isspace() for c in base_url):
        raise InvalidInput(f"a gateway base URL is http:// or https:// then host, port and path, at most {GATEWAY_URL_CHARS_MAX} characters", code="INVALID_URL")
    with uow:
        require_channel(uow, channel_id)
        now = uow.clock.now()
        uow.outbound.set_gateway_url(channel_id, base_url, now)
        uow.audit.append(at=now, actor=actor, action="channel.gateway", subject=f"channel:{channel_id}", detail={"base_url": base_url})
        uow.commit()


def list_jobs(kind: JobKind, uow: UnitOfWork, *, channel_id: str | None = None, limit: int = 100) -> list[OutboundJob]:
    """What the worker last did when calling the channels: tries, next try, the channel's last answer."""
    with uow:
        return uow.outbound.jobs(kind, channel_id=channel_id, limit=limit)
