"""HTTP routes for statements and reconciliation: upload a day's file, read the run, decide discrepancies."""

from collections.abc import Callable
from datetime import date

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gasworks.bootstrap import System
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.errors import InvalidInput
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState
from gasworks.entrypoints.api.schemas import RowId, Strict
from gasworks.services import reconciliation
from gasworks.services.access import Role, actor_of


class DiscrepancyOut(BaseModel):
    id: int
    run_id: int
    klass: str = Field(serialization_alias="class")
    state: str
    channel_id: str
    channel_txn_id: str | None
    payment_id: str | None
    statement_amount_fen: int | None
    gasworks_amount_fen: int | None
    detail: str
    proposed_action: str
    resolution: str | None

    @classmethod
    def of(cls, d: Discrepancy) -> "DiscrepancyOut":
        return cls(**{**d.__dict__, "klass": d.klass.value, "state": d.state.value, "id": d.id or 0, "run_id": d.run_id or 0})


class RunOut(BaseModel):
    run_id: int
    channel_id: str
    statement_date: date
    verdict: str = Field(description="clean, repaired (only repairs were needed) or unclean (something is held for an operator)")
    matched: int
    totals: dict[str, dict[str, int]]
    discrepancies: list[DiscrepancyOut]

    @classmethod
    def of(cls, r: reconciliation.RunReport) -> "RunOut":
        return cls(run_id=r.run_id, channel_id=r.channel_id, statement_date=r.statement_date, verdict=r.verdict, matched=r.matched, totals=r.totals,
                   discrepancies=[DiscrepancyOut.of(d) for d in r.discrepancies])  # fmt: skip


class DecisionIn(Strict):
    decision: str = Field(pattern="^(reverse|adjust|accept)$")
    reason: str = Field(min_length=1, max_length=200)


def reconciliation_routes(system: System, caller: Callable[..., Callable[..., ApiKeyRecord]], errors: dict, read_body: Callable) -> APIRouter:
    router = APIRouter(responses=errors, tags=["reconciliation"])
    settings, new_uow = system.settings, system.new_uow
    readers = (Role.OPERATOR, Role.AUDITOR)

    @router.post("/v1/statements", response_model=RunOut, response_model_by_alias=True)
    async def upload_statement(
        request: Request, channel_id: str, statement_date: date = Query(alias="date"), filename: str = "statement.csv", format: str | None = None,
        who: ApiKeyRecord = Depends(caller(Role.OPERATOR)),
    ) -> RunOut:  # fmt: skip
        """Upload one channel's statement for one day (the file as the body); it is imported whole or refused, then reconciled.
        The same file again returns the first run."""
        raw = await read_body(request, settings.statement_bytes_max)
        imported = await run_in_threadpool(lambda: reconciliation.import_statement(channel_id=channel_id, statement_date=statement_date, filename=filename, raw=raw, uow=new_uow(), actor=actor_of(who), format_=format))
        report = await run_in_threadpool(lambda: reconciliation.reconcile(file_id=imported.file_id, uow_factory=new_uow, actor=actor_of(who), timezone=settings.local_timezone))
        return RunOut.of(report)

    @router.get("/v1/reconciliations/{run_id}", response_model=RunOut, response_model_by_alias=True)
    def get_run(run_id: RowId, who: ApiKeyRecord = Depends(caller(*readers))) -> RunOut:
        return RunOut.of(reconciliation.get_report(run_id, new_uow()))

    @router.get("/v1/reconciliations/{run_id}/discrepancies.csv", response_class=Response)
    def run_csv(run_id: RowId, who: ApiKeyRecord = Depends(caller(*readers))) -> Response:
        report = reconciliation.get_report(run_id, new_uow())
        return Response(reconciliation.report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{run_id}-{report.channel_id}-{report.statement_date}.csv"'})  # fmt: skip

    @router.get("/v1/discrepancies", response_model=list[DiscrepancyOut], response_model_by_alias=True)
    def list_discrepancies(
        state: str | None = "open", klass: str | None = Query(None, alias="class"), channel_id: str | None = None,
        limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*readers)),
    ) -> list[DiscrepancyOut]:  # fmt: skip
        """Discrepancies, held ones (state=open) by default, oldest first."""
        try:
            state_ = DiscrepancyState(state) if state else None
            klass_ = DiscrepancyClass(klass) if klass else None
        except ValueError:
            raise InvalidInput(f"state among {', '.join(DiscrepancyState)}; class among {', '.join(DiscrepancyClass)}", code="INVALID_FILTER") from None
        return [DiscrepancyOut.of(d) for d in reconciliation.list_discrepancies(new_uow(), state=state_, klass=klass_, channel_id=channel_id, limit=limit)]

    @router.post("/v1/discrepancies/{discrepancy_id}/decisions", response_model=DiscrepancyOut, response_model_by_alias=True)
    def decide(discrepancy_id: RowId, body: DecisionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> DiscrepancyOut:
        """An operator's decision: reverse, adjust or accept; money moves as a ledger transaction, always audited."""
        return DiscrepancyOut.of(reconciliation.decide(discrepancy_id, body.decision, body.reason, new_uow(), actor=actor_of(who)))

    return router
