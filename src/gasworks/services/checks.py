"""The books' invariants, checked on demand (`gasworks check`, GET /v1/checks/ledger)."""

from collections import Counter
from dataclasses import dataclass

from gasworks.domain.delivery import AlertKind
from gasworks.domain.ledger import DELIVERY, LedgerCheckFinding, TransactionKind
from gasworks.domain.payments import IllegalTransition, PaymentState, expected_ledger_kinds
from gasworks.services.unit_of_work import UnitOfWork

FINDINGS_MAX = 1000


@dataclass(frozen=True)
class CheckReport:
    findings: list[LedgerCheckFinding]
    totals_by_kind_fen: dict[str, int]
    payments_by_state: dict[str, tuple[int, int]]
    arrears: tuple[int, int] = (0, 0)  # accounts below zero, fen they owe

    @property
    def ok(self) -> bool:
        return not self.findings


def check_ledger(uow: UnitOfWork) -> CheckReport:
    """Every transaction balances; every cached balance equals its entries; the whole ledger sums to
    zero; the delivery account holds exactly the cost of the credit orders still on their way; every
    applied purchase is proved against a serial issued to its meter; and every payment's state agrees
    with its money: its timeline is a path of the life cycle, it owns exactly the ledger transactions
    that path posts (booked: one booking; reversed: the booking and one reversal; refund requested:
    out of suspense once ...), and its money sits where its state says."""
    with uow:
        findings = uow.ledger.find_violations(FINDINGS_MAX)
        totals = uow.ledger.totals_by_kind()
        if sum(totals.values()) != 0:
            findings.append(LedgerCheckFinding("LEDGER_DOES_NOT_SUM_TO_ZERO", "ledger", f"sum {sum(totals.values())} fen"))
        in_delivery_fen = -uow.ledger.entries_sum_fen(DELIVERY)
        undelivered_fen = uow.meter_commands.undelivered_cost_fen()
        if in_delivery_fen != undelivered_fen:
            findings.append(
                LedgerCheckFinding(
                    "DELIVERY_DIFFERS_FROM_CREDIT_ORDERS",
                    DELIVERY,
                    f"delivery account holds {in_delivery_fen} fen, credit orders not yet applied cost {undelivered_fen} fen",
                )
            )
        for state, path, owned, count, example in uow.ledger.payment_trails():
            finding = _trail_finding(state, path, owned)
            if finding is not None:
                findings.append(LedgerCheckFinding("PAYMENT_STATE_DIFFERS_FROM_LEDGER", f"payment {example}" + (f" and {count - 1} more" if count > 1 else ""), finding))
        findings.extend(_meters_believed_no_further_than_issued(uow))
        return CheckReport(findings[:FINDINGS_MAX], totals, uow.payments.totals_by_state(), uow.ledger.accounts_in_arrears())


def _trail_finding(state: str, path: str, owned: str) -> str | None:
    """What is wrong with a payment that is `state`, went through `path` and owns `owned`; None if nothing."""
    states = [PaymentState(s) for s in path.split(">")] if path else []
    if not states or states[-1].value != state:
        return f"{state}, but its timeline ends {states[-1] if states else 'nowhere'}"
    try:
        expected = Counter(expected_ledger_kinds(states))
    except IllegalTransition as illegal:
        return f"its timeline {path} is not a path of the life cycle ({illegal.message})"
    actual = Counter(TransactionKind(k) for k in owned.split(",") if k)
    if actual != expected:
        return f"{state} via {path}: owns {sorted(actual.elements()) or 'no transaction'}, expected {sorted(expected.elements()) or 'none'}"
    return None


def _meters_believed_no_further_than_issued(uow: UnitOfWork) -> list[LedgerCheckFinding]:
    """Every applied purchase is proved by an issued serial that its meter's record covers; no
    meter stands above what was issued; a meter that claimed a purchase never issued is listed
    until a person records what it was."""
    findings = [
        LedgerCheckFinding("PURCHASE_APPLIED_WITHOUT_PROOF", f"meter:{serial}", f"purchase #{seq} is applied; the meter has applied #{applied}, highest issued #{issued}")
        for serial, seq, applied, issued in uow.meter_commands.applied_without_proof(FINDINGS_MAX)
    ]
    findings += [LedgerCheckFinding("METER_APPLIED_BEYOND_ISSUED", f"meter:{serial}", f"meter stands at purchase #{applied}; highest issued #{issued}") for serial, applied, issued in uow.meters.claimed_beyond_issued(FINDINGS_MAX)]
    findings += [
        LedgerCheckFinding(AlertKind.METER_CLAIMS_UNISSUED.value, alert.subject, f"{alert.reason} (alert {alert.id}, open since {alert.raised_at:%Y-%m-%d %H:%M} UTC)")
        for alert in uow.alerts.open_of_kind(AlertKind.METER_CLAIMS_UNISSUED, FINDINGS_MAX)
    ]
    return findings


def database_answers(uow: UnitOfWork) -> None:
    """The health probes' question: the database opens a transaction and answers a read of the books
    (raises whatever the database raised if it does not)."""
    with uow:
        uow.ledger.entries_sum_fen("suspense")
