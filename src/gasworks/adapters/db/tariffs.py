"""The tariffs repository: versions by customer class and effective day, never edited."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken
from gasworks.domain.accounts import CustomerClass
from gasworks.domain.tariffs import Tariff, Tier

_IN_FORCE = select(t.tariffs).where(t.tariffs.c.customer_class == bindparam("customer_class"), t.tariffs.c.effective_from <= bindparam("day")).order_by(t.tariffs.c.effective_from.desc()).limit(1)  # built once: it is read on every booking


class Tariffs:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, tariff: Tariff, *, at: datetime, actor: str) -> int | None:
        """None if a version for this class and day exists already: versions are never edited."""
        return self.c.execute(
            insert_unless_taken(self.c, t.tariffs)
            .values(
                customer_class=tariff.customer_class.value,
                effective_from=tariff.effective_from,
                tiers=[[tier.upto_litres, tier.price_milli_fen_per_m3] for tier in tariff.tiers],
                year_start_month=tariff.year_start_month,
                year_start_day=tariff.year_start_day,
                created_at=at,
                created_by=actor,
            )
            .returning(t.tariffs.c.id)
        ).scalar_one_or_none()

    def in_force(self, customer_class: CustomerClass, day: date) -> Tariff | None:
        row = self.c.execute(_IN_FORCE, {"customer_class": customer_class.value, "day": day}).first()
        return _tariff(row) if row else None

    def list(self) -> list[Tariff]:
        rows = self.c.execute(select(t.tariffs).order_by(t.tariffs.c.customer_class, t.tariffs.c.effective_from))
        return [_tariff(r) for r in rows]


def _tariff(row: Any) -> Tariff:
    return Tariff(
        customer_class=CustomerClass(row.customer_class),
        effective_from=row.effective_from,
        tiers=tuple(Tier(upto, price) for upto, price in row.tiers),
        year_start_month=row.year_start_month,
        year_start_day=row.year_start_day,
        id=row.id,
    )
