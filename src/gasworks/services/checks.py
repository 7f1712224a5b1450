"""The ledger's invariants, checked on demand (`gasworks check`, GET /v1/checks/ledger)."""

from dataclasses import dataclass

from gasworks.adapters.db.repositories import LedgerCheckFinding
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
    delivery account holds exactly the cost of the credit orders still on their way."""
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
        return CheckReport(findings, totals, uow.payments.totals_by_state())
