"""Tariffs are versioned data: operators add a version with its effective date; none is ever edited."""

from datetime import date

from gasworks.domain.accounts import CustomerClass
from gasworks.domain.errors import Conflict
from gasworks.domain.tariffs import LITRES_PER_M3, Tariff, Tier, price_text_to_milli_fen
from gasworks.services.unit_of_work import UnitOfWork


def add_tariff(
    *,
    customer_class: CustomerClass,
    effective_from: date,
    tiers: list[tuple[int | None, str]],  # (upper bound in m³ or None, price in yuan per m³ as text)
    year_start_month: int,
    year_start_day: int,
    uow: UnitOfWork,
    actor: str,
) -> Tariff:
    tariff = Tariff(
        customer_class=customer_class,
        effective_from=effective_from,
        tiers=tuple(Tier(None if upto is None else upto * LITRES_PER_M3, price_text_to_milli_fen(price)) for upto, price in tiers),
        year_start_month=year_start_month,
        year_start_day=year_start_day,
    )
    with uow:
        tariff_id = uow.tariffs.add(tariff, at=uow.clock.now(), actor=actor)
        if tariff_id is None:
            raise Conflict(f"a {customer_class} tariff from {effective_from} exists; add one with another date", code="TARIFF_EXISTS")
        uow.audit.append(
            at=uow.clock.now(), actor=actor, action="tariff.add", subject=f"tariff:{tariff_id}",
            detail={"customer_class": customer_class.value, "effective_from": effective_from.isoformat(), "tiers": [[u, p] for u, p in tiers]},
        )  # fmt: skip
        uow.commit()
    return Tariff(tariff.customer_class, tariff.effective_from, tariff.tiers, tariff.year_start_month, tariff.year_start_day, id=tariff_id)


def list_tariffs(uow: UnitOfWork) -> list[Tariff]:
    with uow:
        return uow.tariffs.list()
