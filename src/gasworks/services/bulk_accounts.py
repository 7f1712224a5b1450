"""Opening many accounts in one unit of work: a city's register loaded at once (migration, simulator).

The same checks and the same rows as `accounts.open_account` one by one (customer, meter, prepaid
ledger account, the IoT meter's frame security record and its first key, one `account.open` audit
record each), written a batch at a time. With `export_keys`, the keys made are returned for the
installer, each export audited as `meter_keys.export_key` audits it.
"""

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from gasworks.domain.accounts import Customer, Meter, MeterKind, check_account_no, check_meter_serial
from gasworks.domain.errors import Conflict, InvalidInput
from gasworks.domain.ledger import LedgerAccountKind, prepaid_account
from gasworks.domain.meter_security import KEY_BYTES, MeterFrameSecurity
from gasworks.services.accounts import OpenAccount
from gasworks.services.meter_keys import MeterKey, stored_model
from gasworks.services.unit_of_work import UnitOfWork

ACCOUNTS_PER_CALL_MAX = 50_000  # one transaction's worth; a city is opened in several calls


class BulkAccountStore(Protocol):
    def taken(self, account_nos: Sequence[str], serials: Sequence[str]) -> tuple[list[str], list[str]]: ...
    def add(
        self, customers: Sequence[Customer], ledger_accounts: Sequence[tuple[str, LedgerAccountKind]], securities: Sequence[MeterFrameSecurity],
        keys: Sequence[tuple[str, bytes]], audit: Sequence[tuple[str, str, str, dict[str, Any]]], at: datetime,
    ) -> None: ...  # fmt: skip


class BulkAccountsUnitOfWork(UnitOfWork, Protocol):
    bulk_accounts: BulkAccountStore


def _check(cmd: OpenAccount) -> None:
    """What `open_account` refuses before writing anything, refused here for the whole batch."""
    check_account_no(cmd.account_no)
    check_meter_serial(cmd.meter_serial)
    if cmd.location is not None and not (-90 <= cmd.location[0] <= 90 and -180 <= cmd.location[1] <= 180):
        raise InvalidInput(f"location {cmd.location} is not a latitude and longitude", code="INVALID_LOCATION")
    if not cmd.name.strip() or not cmd.phone.strip():
        raise InvalidInput(f"account {cmd.account_no}: name and phone are required", code="MISSING_FIELD")


def open_accounts(cmds: Sequence[OpenAccount], uow: BulkAccountsUnitOfWork, *, actor: str, export_keys: bool = False) -> list[MeterKey]:
    """All of them or none: any account or meter already there, or twice in the batch, refuses the batch."""
    if len(cmds) > ACCOUNTS_PER_CALL_MAX:
        raise InvalidInput(f"at most {ACCOUNTS_PER_CALL_MAX:,} accounts per call, got {len(cmds):,}", code="BATCH_TOO_LARGE")
    for cmd in cmds:
        _check(cmd)
    account_nos = [c.account_no for c in cmds]
    serials = [c.meter_serial for c in cmds]
    if len(set(account_nos)) != len(cmds) or len(set(serials)) != len(cmds):
        raise Conflict("an account number or meter serial appears twice in the batch", code="ACCOUNT_EXISTS")
    with uow:
        now = uow.clock.now()
        taken_accounts, taken_meters = uow.bulk_accounts.taken(account_nos, serials)
        if taken_accounts:
            raise Conflict(f"account {taken_accounts[0]} already exists ({len(taken_accounts)} in this batch)", code="ACCOUNT_EXISTS")
        if taken_meters:
            raise Conflict(f"meter {taken_meters[0]} already belongs to an account ({len(taken_meters)} in this batch)", code="METER_TAKEN")
        # Models as stored (meters models add), read once per batch: an unknown one refuses the batch.
        profiles = {name: stored_model(uow, name) for name in {c.meter_model for c in cmds if c.meter_kind == MeterKind.IOT}}
        customers: list[Customer] = []
        securities: list[MeterFrameSecurity] = []
        keys: list[tuple[str, bytes]] = []
        audit: list[tuple[str, str, str, dict[str, Any]]] = []
        exported: list[MeterKey] = []
        for cmd in cmds:
            customer = Customer(
                account_no=cmd.account_no, name=cmd.name.strip(), address=cmd.address.strip(), community=cmd.community.strip(), grid=cmd.grid.strip(),
                phone=cmd.phone.strip(), customer_class=cmd.customer_class, meter=Meter(serial=cmd.meter_serial, kind=cmd.meter_kind), created_at=now,
                location=cmd.location,
            )  # fmt: skip
            customers.append(customer)
            if cmd.meter_kind == MeterKind.IOT:  # as meter_keys.register_meter does
                profile = profiles[cmd.meter_model]
                securities.append(MeterFrameSecurity(serial=cmd.meter_serial, profile=profile, active_key_version=1 if profile.seals_frames else None))
                if profile.seals_frames:
                    key = secrets.token_bytes(KEY_BYTES)
                    keys.append((cmd.meter_serial, key))
                    if export_keys:
                        exported.append(MeterKey(cmd.meter_serial, profile.name, profile.mac_scheme, 1, key))
            detail = {"meter_serial": cmd.meter_serial, "meter_kind": cmd.meter_kind.value, "meter_model": cmd.meter_model, "community": customer.community}
            audit.append((actor, "account.open", f"account:{cmd.account_no}", detail))
        audit += [(actor, "meter.key.export", f"meter:{k.serial}", {"key_version": k.key_version}) for k in exported]
        ledger_accounts = [(prepaid_account(c.account_no), LedgerAccountKind.PREPAID) for c in cmds]
        uow.bulk_accounts.add(customers, ledger_accounts, securities, keys, audit, now)
        uow.commit()
        return exported
