"""Many rows per statement: opening a city's accounts, and taking a batch of meter reports in one transaction.

The rows are exactly those the one-by-one repositories write (`Customers.add`, `Ledger.open_account`,
`MeterKeys.add_security` / `add_key`, `AuditLog.append`, `Meters.save`); only the statements differ.
On PostgreSQL new rows go in with COPY and changed meters with one UPDATE ... FROM a COPY-filled
temporary table; elsewhere (SQLite) with executemany, which is what that engine does best anyway.
"""

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ARRAY, Connection, any_, insert, select, update
from sqlalchemy.sql import bindparam

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.delivery import _LINK_COLUMNS, Meters, _link, model_of
from gasworks.adapters.db.meter_keys import NONCE_BYTES, MeterKeys, SiteKeyMismatch, _aad, _security, site_key_id
from gasworks.domain.accounts import Customer
from gasworks.domain.delivery import CommandState, MeterLink
from gasworks.domain.errors import InvalidInput
from gasworks.domain.ledger import LedgerAccountKind
from gasworks.domain.meter_security import MeterFrameSecurity

IN_LIST_MAX = 10_000  # serials per IN (...) / ANY(...) lookup; callers batch below this


def _one_of(c: Connection, column: Any, values: Sequence[Any]) -> Any:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`, one parameter however many values, so
    neither side parses and plans a statement with thousands of placeholders every batch."""
    if c.dialect.name == "postgresql":
        return column == any_(bindparam(f"{column.name}_values", list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def _copy_rows(c: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    cursor = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


class BulkAccounts:
    def __init__(self, c: Connection, meter_keys: MeterKeys) -> None:
        self.c = c
        self.meter_keys = meter_keys

    @property
    def _copies(self) -> bool:
        return self.c.dialect.name == "postgresql"

    def taken(self, account_nos: Sequence[str], serials: Sequence[str]) -> tuple[list[str], list[str]]:
        """Account numbers and meter serials among these that already exist."""
        accounts: list[str] = []
        meters: list[str] = []
        for i in range(0, len(account_nos), IN_LIST_MAX):
            chunk = account_nos[i : i + IN_LIST_MAX]
            accounts += [r[0] for r in self.c.execute(select(t.customers.c.account_no).where(_one_of(self.c, t.customers.c.account_no, chunk)))]
        for i in range(0, len(serials), IN_LIST_MAX):
            chunk = serials[i : i + IN_LIST_MAX]
            meters += [r[0] for r in self.c.execute(select(t.meters.c.serial).where(_one_of(self.c, t.meters.c.serial, chunk)))]
        return accounts, meters

    def add(
        self, customers: Sequence[Customer], ledger_accounts: Sequence[tuple[str, LedgerAccountKind]], securities: Sequence[MeterFrameSecurity],
        keys: Sequence[tuple[str, bytes]], audit: Sequence[tuple[str, str, str, dict]], at: datetime,
    ) -> None:  # fmt: skip
        """`keys`: (serial, key) of version 1, in clear, sealed here under the site key; `audit`: (actor, action, subject, detail)."""
        models = {s.serial: s.profile for s in securities}
        site_key = self.meter_keys.site_key() if keys else b""
        sealer, key_id = (AESGCM(site_key), site_key_id(site_key)) if keys else (None, "")

        def sealed(serial: str, key: bytes) -> bytes:
            assert sealer is not None
            nonce = os.urandom(NONCE_BYTES)
            return nonce + sealer.encrypt(nonce, key, _aad(serial, 1))

        plan: list[tuple[Any, tuple[str, ...], list[tuple]]] = [
            (t.customers, ("account_no", "name", "address", "community", "grid", "phone", "customer_class", "created_at", "latitude", "longitude"), [
                (c.account_no, c.name, c.address, c.community, c.grid, c.phone, c.customer_class.value, c.created_at,
                 c.location[0] if c.location else None, c.location[1] if c.location else None) for c in customers]),
            # An IoT meter takes its model, and the model's button setting, as Meters.set_model gives them one by one.
            (t.meters, ("serial", "account_no", "kind", "status", "model", "reopen_needs_button"), [
                (c.meter.serial, c.account_no, c.meter.kind.value, c.meter.status.value,
                 models[c.meter.serial].name if c.meter.serial in models else None, models[c.meter.serial].reopen_needs_button if c.meter.serial in models else False)
                for c in customers]),
            (t.ledger_accounts, ("code", "kind", "entries_sum_fen"), [(code, kind.value, 0) for code, kind in ledger_accounts]),
            (t.meter_frame_security, ("serial", "active_key_version", "pending_key_version", "uplink_counter_seen", "downlink_counter_sent", "rotated_at"),
             [(s.serial, s.active_key_version, s.pending_key_version, s.uplink_counter_seen, s.downlink_counter_sent, s.rotated_at) for s in securities]),
            (t.meter_keys, ("serial", "key_version", "key_sealed", "site_key_id", "created_at"), [(serial, 1, sealed(serial, key), key_id, at) for serial, key in keys]),
            (t.audit_log, ("at", "actor", "action", "subject", "detail"), [(at, actor, action, subject, detail) for actor, action, subject, detail in audit]),
        ]  # fmt: skip
        for table, columns, rows in plan:
            if not rows:
                continue
            if self._copies:
                _copy_rows(self.c, table.name, columns, [(*row[:-1], json.dumps(row[-1], ensure_ascii=False)) if table is t.audit_log else row for row in rows])
            else:
                self.c.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


class BulkMeterReports:
    """What a batch of meter reports needs, read and written a batch at a time."""

    def __init__(self, c: Connection, meter_keys: MeterKeys) -> None:
        self.c = c
        self.meter_keys = meter_keys

    def lock(self, serials: Sequence[str]) -> tuple[dict[str, MeterLink], dict[str, MeterFrameSecurity]]:
        """The meters and their frame security records, locked in serial order (as one at a time would, without deadlocks)."""
        if len(serials) > IN_LIST_MAX:
            raise ValueError(f"at most {IN_LIST_MAX} meters per batch, got {len(serials)}")
        ordered = sorted(set(serials))
        links = {r.serial: _link(r) for r in self.c.execute(Meters(self.c)._select(lock=True).where(_one_of(self.c, t.meters.c.serial, ordered)).order_by(t.meters.c.serial))}
        query = select(t.meter_frame_security).where(_one_of(self.c, t.meter_frame_security.c.serial, ordered)).order_by(t.meter_frame_security.c.serial)
        if self.c.dialect.name == "postgresql":
            query = query.with_for_update()
        rows = list(self.c.execute(query))
        # Each meter's model profile (meters.model -> meter_models), read once for the batch as get_security reads it for one.
        names = {links[r.serial].model for r in rows if r.serial in links}
        profiles = {m.name: model_of(m) for m in self.c.execute(select(t.meter_models).where(t.meter_models.c.name.in_(sorted(n for n in names if n))))}
        securities = {}
        for r in rows:
            profile = profiles.get(links[r.serial].model or "") if r.serial in links else None
            if profile is None:
                raise InvalidInput(f"meter {r.serial} has frame security but no known model: set one with `gasworks meters set {r.serial} --model`", code="METER_MODEL_MISSING")
            securities[r.serial] = _security(r, profile)
        return links, securities

    def keys(self, wanted: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """The usable (not retired) keys among these (serial, version) pairs, opened under the site key."""
        if not wanted:
            return {}
        mk = t.meter_keys
        serials = sorted({s for s, _ in wanted})
        rows = self.c.execute(select(mk).where(_one_of(self.c, mk.c.serial, serials), mk.c.retired_at.is_(None)))
        site_key = self.meter_keys.site_key()
        opener, key_id = AESGCM(site_key), site_key_id(site_key)
        wanted_set = set(wanted)
        found: dict[tuple[str, int], bytes] = {}
        for row in rows:
            if (row.serial, row.key_version) not in wanted_set:
                continue
            if row.site_key_id != key_id:
                raise SiteKeyMismatch(f"meter {row.serial}'s key version {row.key_version} was sealed under site key {row.site_key_id}; this server's is {key_id}")
            sealed = bytes(row.key_sealed)
            found[(row.serial, row.key_version)] = opener.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(row.serial, row.key_version))
        return found

    def with_commands(self, serials: Sequence[str], states: frozenset[CommandState], route: str) -> set[str]:
        """Those of these meters with a command in one of `states` on `route`."""
        mc = t.meter_commands
        query = select(mc.c.meter_serial).where(_one_of(self.c, mc.c.meter_serial, sorted(set(serials))), mc.c.state.in_([s.value for s in states]), mc.c.route == route).distinct()
        return {r[0] for r in self.c.execute(query)}

    def save(self, links: Sequence[MeterLink], securities: Sequence[MeterFrameSecurity]) -> None:
        """Write back what the batch changed, as `Meters.save` and `MeterKeys.save_security` would one by one."""
        link_columns = ("link_state", *_LINK_COLUMNS)
        link_rows = [(link.serial, link.link_state.value, *(getattr(link, name) for name in _LINK_COLUMNS)) for link in links]
        security_columns = ("active_key_version", "pending_key_version", "uplink_counter_seen", "downlink_counter_sent", "rotated_at")
        security_rows = [(s.serial, *(getattr(s, name) for name in security_columns)) for s in securities]
        for table, columns, rows in ((t.meters, link_columns, link_rows), (t.meter_frame_security, security_columns, security_rows)):
            if not rows:
                continue
            if self.c.dialect.name == "postgresql":  # one COPY and one UPDATE ... FROM instead of a statement per meter
                staged = f"bulk_{table.name}"
                names = ", ".join(("serial", *columns))
                self.c.exec_driver_sql(f"CREATE TEMP TABLE {staged} ON COMMIT DROP AS SELECT {names} FROM {table.name} WITH NO DATA")
                _copy_rows(self.c, staged, ("serial", *columns), rows)
                assignments = ", ".join(f"{name} = b.{name}" for name in columns)
                self.c.exec_driver_sql(f"UPDATE {table.name} AS m SET {assignments} FROM {staged} AS b WHERE m.serial = b.serial")
                self.c.exec_driver_sql(f"DROP TABLE {staged}")
            else:
                values = {name: bindparam(name) for name in columns}
                self.c.execute(update(table).where(table.c.serial == bindparam("b_serial")).values(**values),
                               [dict(zip(("b_serial", *columns), row, strict=True)) for row in rows])  # fmt: skip
