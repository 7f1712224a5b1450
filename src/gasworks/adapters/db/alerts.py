"""The alerts repository: one open alert per kind and subject, closed by the system or a person."""

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import claim_row
from gasworks.domain.delivery import Alert, AlertKind

_CLEAR = update(t.alerts).where(t.alerts.c.open_key == bindparam("key"))  # built once: every report may clear one


class Alerts:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def raise_once(self, *, kind: AlertKind | str, subject: str, reason: str, at: datetime) -> bool:
        """Open an alert unless one is open for the same kind and subject; True if it is new."""
        kind = str(kind)
        return claim_row(self.c, t.alerts, "id", {"kind": kind, "subject": subject, "reason": reason[:500], "raised_at": at, "open_key": f"{kind}:{subject}"})

    def clear(self, *, kind: AlertKind | str, subject: str, at: datetime, resolved_by: str | None = None, resolution: str | None = None) -> int:
        return self.c.execute(_CLEAR, {"key": f"{kind}:{subject}", "cleared_at": at, "open_key": None, "resolved_by": resolved_by, "resolution": resolution[:300] if resolution else None}).rowcount

    def get(self, alert_id: int) -> Alert | None:
        row = self.c.execute(select(t.alerts).where(t.alerts.c.id == alert_id)).first()
        return _alert(row) if row else None

    def open_of_kind(self, kind: AlertKind | str, limit: int) -> list[Alert]:
        rows = self.c.execute(select(t.alerts).where(t.alerts.c.kind == str(kind), t.alerts.c.cleared_at.is_(None)).order_by(t.alerts.c.id).limit(limit))
        return [_alert(r) for r in rows]

    def list(self, *, limit: int, open_only: bool = True, subject: str | None = None) -> list[Alert]:
        query = select(t.alerts).order_by(t.alerts.c.id.desc()).limit(limit)
        if open_only:
            query = query.where(t.alerts.c.cleared_at.is_(None))
        if subject:
            query = query.where(t.alerts.c.subject == subject)
        return [_alert(r) for r in self.c.execute(query)]

    def count_open_by_kind(self) -> dict[str, int]:
        rows = self.c.execute(select(t.alerts.c.kind, func.count()).where(t.alerts.c.cleared_at.is_(None)).group_by(t.alerts.c.kind))
        return {kind: int(n) for kind, n in rows}


def _alert(r: Any) -> Alert:
    return Alert(r.id, r.kind, r.subject, r.reason, r.raised_at, r.cleared_at, r.resolved_by, r.resolution)
