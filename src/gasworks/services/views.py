"""Read-only views for the API and CLI: one unit of work each, nothing committed."""

from typing import Any

from gasworks.services.unit_of_work import UnitOfWork


def rejections(uow: UnitOfWork, *, limit: int, channel_id: str | None = None, code: str | None = None) -> list[dict[str, Any]]:
    """Every refused request, newest first."""
    with uow:
        return uow.rejections.list(limit=limit, channel_id=channel_id, code=code)


def audit_log(uow: UnitOfWork, *, limit: int, subject: str | None = None) -> list[dict[str, Any]]:
    with uow:
        return uow.audit.list(limit=limit, subject=subject)
