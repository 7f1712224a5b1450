"""Outbound job state and channel gateway configuration in SQL (the `OutboundStore` port)."""

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken
from gasworks.domain.outbound import JobKind, JobState, OutboundJob
from gasworks.domain.payments import OrderState, PaymentOrder


class Outbound:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def job(self, kind: JobKind, subject: str, *, lock: bool = False) -> OutboundJob | None:
        j = t.outbound_jobs
        query = select(j).where(j.c.kind == kind.value, j.c.subject == subject)
        if lock and self.c.dialect.name == "postgresql":  # two workers never call the channel for one job at once
            query = query.with_for_update()
        row = self.c.execute(query).first()
        return _job(row) if row else None

    def save_job(self, job: OutboundJob, at: datetime) -> None:
        values = {
            "channel_id": job.channel_id, "state": job.state.value, "tries": job.tries, "next_try_at": job.next_try_at,
            "last_outcome": job.last_outcome[:300], "step": job.step[:20], "updated_at": at,
        }  # fmt: skip
        inserted = self.c.execute(insert_unless_taken(self.c, t.outbound_jobs).values(kind=job.kind.value, subject=job.subject, **values).returning(t.outbound_jobs.c.kind)).first()
        if inserted is None:
            j = t.outbound_jobs
            self.c.execute(update(j).where(j.c.kind == job.kind.value, j.c.subject == job.subject).values(**values))

    def jobs(self, kind: JobKind, *, channel_id: str | None = None, limit: int = 100) -> list[OutboundJob]:
        j = t.outbound_jobs
        query = select(j).where(j.c.kind == kind.value).order_by(j.c.updated_at.desc()).limit(limit)
        if channel_id is not None:
            query = query.where(j.c.channel_id == channel_id)
        return [_job(r) for r in self.c.execute(query)]

    def gateway_url(self, channel_id: str) -> str | None:
        g = t.channel_gateways
        return self.c.execute(select(g.c.base_url).where(g.c.channel_id == channel_id)).scalar_one_or_none()

    def set_gateway_url(self, channel_id: str, base_url: str, at: datetime) -> None:
        g = t.channel_gateways
        inserted = self.c.execute(insert_unless_taken(self.c, g).values(channel_id=channel_id, base_url=base_url, updated_at=at).returning(g.c.channel_id)).first()
        if inserted is None:
            self.c.execute(update(g).where(g.c.channel_id == channel_id).values(base_url=base_url, updated_at=at))

    def gateway_channels(self) -> list[str]:
        g = t.channel_gateways
        return list(self.c.execute(select(g.c.channel_id).order_by(g.c.channel_id)).scalars())

    def open_orders_due(self, channel_id: str, created_after: datetime, created_before: datetime, now: datetime, limit: int) -> list[PaymentOrder]:
        """Open orders of a channel created in the window whose query is due (never asked, or its backoff is over)."""
        o, j = t.payment_orders, t.outbound_jobs
        joined = o.outerjoin(j, and_(j.c.kind == JobKind.ORDER_QUERY.value, j.c.subject == o.c.out_trade_no))
        rows = self.c.execute(
            select(o)
            .select_from(joined)
            .where(
                o.c.channel_id == channel_id, o.c.state == OrderState.OPEN.value, o.c.created_at > created_after, o.c.created_at <= created_before,
                or_(j.c.kind.is_(None), and_(j.c.state == JobState.WAITING.value, j.c.next_try_at <= now)),
            )
            .order_by(o.c.created_at)
            .limit(limit)
        )  # fmt: skip
        return [PaymentOrder(r.out_trade_no, r.channel_id, r.account_no, r.amount_fen, OrderState(r.state), r.created_at, r.payment_id) for r in rows]

    def close_order(self, out_trade_no: str) -> bool:
        o = t.payment_orders
        closed = self.c.execute(update(o).where(o.c.out_trade_no == out_trade_no, o.c.state == OrderState.OPEN.value).values(state=OrderState.CLOSED.value))
        return closed.rowcount == 1


def _job(row: Any) -> OutboundJob:
    return OutboundJob(
        kind=JobKind(row.kind), subject=row.subject, channel_id=row.channel_id, state=JobState(row.state), tries=row.tries,
        next_try_at=row.next_try_at, last_outcome=row.last_outcome, step=row.step,
    )  # fmt: skip
