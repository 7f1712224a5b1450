"""The kiosks repository: the self-service machines and counters residents write their cards at."""

from datetime import datetime

from sqlalchemy import Connection, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken
from gasworks.domain.kiosks import Kiosk


class Kiosks:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, kiosk: Kiosk, at: datetime) -> bool:
        inserted = self.c.execute(insert_unless_taken(self.c, t.kiosks).values(**kiosk.__dict__, created_at=at).returning(t.kiosks.c.id)).first()
        return inserted is not None

    def set_status(self, kiosk_id: str, status: str) -> int:
        return self.c.execute(update(t.kiosks).where(t.kiosks.c.id == kiosk_id).values(status=status)).rowcount

    def list(self, *, status: str | None = None) -> list[Kiosk]:
        query = select(t.kiosks).order_by(t.kiosks.c.id)
        if status:
            query = query.where(t.kiosks.c.status == status)
        return [Kiosk(**{k: v for k, v in r._mapping.items() if k != "created_at"}) for r in self.c.execute(query)]
