"""The ledger's invariants, checked on demand (`gasworks check`, GET /v1/checks/ledger)."""

from dataclasses import dataclass

from gasworks.adapters.db.repositories import LedgerCheckFinding
from gasworks.domain.delivery import AlertKind
from gasworks.domain.ledger import DELIVERY
from gasworks.services.unit_of_work import UnitOfWork

FINDINGS_MAX = 1000


@dataclass(frozen=True)
class CheckReport:
    findings: list[LedgerCheckFinding]
    totals_by_kind_fen: dict[str, int]
    payments_by_state: dict[str, tuple[int, int]]

    @property
    def ok(self) -> bool:
        return not self.findings


def check_ledger(uow: UnitOfWork) -> CheckReport:
    """Every transaction balances; every cached balance equals its entries; every booked or held
    payment has exactly one booking transaction, for its amount; the whole ledger sums to zero; the
    delivery account holds exactly the cost of the credit orders still on their way; every applied
    purchase is proved against a serial issued to its meter."""
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
        findings.extend(_meters_believed_no_further_than_issued(uow))
        return CheckReport(findings, totals, uow.payments.totals_by_state())


def _meters_believed_no_further_than_issued(uow: UnitOfWork) -> list[LedgerCheckFinding]:
    """Every applied purchase is proved by an issued serial that its meter's record covers; no
    meter stands above what was issued; a meter that claimed a purchase never issued is listed
    until a person records what it was."""
    findings = [
        LedgerCheckFinding("PURCHASE_APPLIED_WITHOUT_PROOF", f"meter:{serial}", f"purchase #{seq} is applied; the meter has applied #{applied}, highest issued #{issued}")
        for serial, seq, applied, issued in uow.meter_commands.applied_without_proof(FINDINGS_MAX)
    ]
    findings += [
        LedgerCheckFinding("METER_APPLIED_BEYOND_ISSUED", f"meter:{serial}", f"meter stands at purchase #{applied}; highest issued #{issued}")
        for serial, applied, issued in uow.meters.claimed_beyond_issued(FINDINGS_MAX)
    ]
    findings += [
        LedgerCheckFinding(AlertKind.METER_CLAIMS_UNISSUED.value, alert.subject, f"{alert.reason} (alert {alert.id}, open since {alert.raised_at:%Y-%m-%d %H:%M} UTC)")
        for alert in uow.alerts.open_of_kind(AlertKind.METER_CLAIMS_UNISSUED, FINDINGS_MAX)
    ]
    return findings
