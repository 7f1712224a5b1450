"""Customer accounts and their meters."""

from dataclasses import dataclass

from gasworks.domain.accounts import (
    Customer,
    CustomerClass,
    Meter,
    MeterKind,
    check_account_no,
    check_meter_serial,
)
from gasworks.domain.errors import Conflict, InvalidInput, NotFound
from gasworks.domain.ledger import LedgerAccountKind, prepaid_account
from gasworks.domain.meter_security import DEFAULT_METER_MODEL
from gasworks.domain.payments import Payment
from gasworks.services import meter_keys
from gasworks.services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class OpenAccount:
    account_no: str
    name: str
    address: str
    community: str
    grid: str
    phone: str
    meter_serial: str
    meter_kind: MeterKind
    customer_class: CustomerClass = CustomerClass.RESIDENTIAL
    location: tuple[float, float] | None = None
    meter_model: str = DEFAULT_METER_MODEL  # a profile in meter_models (domain/meter_models.py): frames, serial width, unit, button


def open_account(cmd: OpenAccount, uow: UnitOfWork, *, actor: str) -> Customer:
    check_account_no(cmd.account_no)
    check_meter_serial(cmd.meter_serial)
    if cmd.location is not None and not (-90 <= cmd.location[0] <= 90 and -180 <= cmd.location[1] <= 180):
        raise InvalidInput(f"location {cmd.location} is not a latitude and longitude", code="INVALID_LOCATION")
    if not cmd.name.strip() or not cmd.phone.strip():
        raise InvalidInput("name and phone are required", code="MISSING_FIELD")
    with uow:
        if cmd.meter_kind == MeterKind.IOT:
            meter_keys.stored_model(uow, cmd.meter_model)  # an unknown model is refused before anything is written
        if uow.customers.exists(cmd.account_no):
            raise Conflict(f"account {cmd.account_no} already exists", code="ACCOUNT_EXISTS")
        if uow.customers.meter_serial_taken(cmd.meter_serial):
            raise Conflict(f"meter {cmd.meter_serial} already belongs to an account", code="METER_TAKEN")
        customer = Customer(
            account_no=cmd.account_no,
            name=cmd.name.strip(),
            address=cmd.address.strip(),
            community=cmd.community.strip(),
            grid=cmd.grid.strip(),
            phone=cmd.phone.strip(),
            customer_class=cmd.customer_class,
            meter=Meter(serial=cmd.meter_serial, kind=cmd.meter_kind),
            created_at=uow.clock.now(),
            location=cmd.location,
        )
        uow.customers.add(customer)
        uow.ledger.open_account(prepaid_account(cmd.account_no), LedgerAccountKind.PREPAID)
        if cmd.meter_kind == MeterKind.IOT:  # its own key, made here (export it for the meter: `gasworks meters export-key`)
            meter_keys.register_meter(uow, serial=cmd.meter_serial, model=cmd.meter_model)
        uow.audit.append(
            at=uow.clock.now(),
            actor=actor,
            action="account.open",
            subject=f"account:{cmd.account_no}",
            detail={"meter_serial": cmd.meter_serial, "meter_kind": cmd.meter_kind.value, "meter_model": cmd.meter_model, "community": customer.community},
        )
        uow.commit()
        return customer


@dataclass(frozen=True)
class AccountView:
    customer: Customer
    balance_fen: int


def get_account(account_no: str, uow: UnitOfWork) -> AccountView:
    with uow:
        customer = _require_customer(uow, account_no)
        return AccountView(customer, uow.ledger.balance_fen(account_no))


def account_payments(account_no: str, limit: int, uow: UnitOfWork) -> list[Payment]:
    """An account's payments, at most `limit` of them; none for no such account (ACCOUNT_NOT_FOUND)."""
    with uow:
        _require_customer(uow, account_no)
        return uow.payments.list_for_account(account_no, limit)


def _require_customer(uow: UnitOfWork, account_no: str) -> Customer:
    customer = uow.customers.get(account_no)
    if customer is None:
        raise NotFound(f"no account {account_no!r}", code="ACCOUNT_NOT_FOUND")
    return customer
