"""What auditors read: every refused request, the audit log, and the ledger check."""

from typing import Any

from fastapi import APIRouter, Depends, Query

from gasworks.bootstrap import System
from gasworks.domain.access import ApiKeyRecord
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.common import READERS, Callers
from gasworks.services import checks, views


def audit_routes(system: System, caller: Callers, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    router = APIRouter(tags=["audit"], responses=errors)
    settings = system.settings
    new_uow = system.new_uow

    @router.get("/v1/rejections")
    def rejections(
        channel_id: str | None = Query(None, max_length=40), code: str | None = Query(None, max_length=40),
        limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS)),
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Every refused request, newest first: when, which channel (or device's channel, or endpoint:
        devices, cards, orders, statements, meters …), the caller's key, the code and the reason, the
        body's size (`body_bytes`) and SHA-256 (`body_sha256`, none when refused unread)."""
        return views.rejections(new_uow(), limit=limit, channel_id=channel_id, code=code)

    @router.get("/v1/audit")
    def audit_log(subject: str | None = None, limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))) -> list[dict[str, Any]]:
        return views.audit_log(new_uow(), limit=limit, subject=subject)

    @router.get("/v1/checks/ledger", response_model=s.LedgerCheckOut)
    def ledger_check(who: ApiKeyRecord = Depends(caller(*READERS))) -> s.LedgerCheckOut:
        report = checks.check_ledger(new_uow())
        return s.LedgerCheckOut(
            ok=report.ok,
            findings=[s.Finding(**f.__dict__) for f in report.findings],
            totals_by_kind_fen=report.totals_by_kind_fen,
            payments_by_state={k: {"count": n, "amount_fen": fen} for k, (n, fen) in report.payments_by_state.items()},
            arrears={"accounts": report.arrears[0], "amount_fen": report.arrears[1]},
        )

    return router
