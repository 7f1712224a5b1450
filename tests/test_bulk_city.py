"""A large city's paths: the register opened in bulk, daily reports taken a batch per transaction,
and a small array-kept city day through them, on SQLite and PostgreSQL."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from gasworks.adapters.db import tables as t
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.batch_frames import SealedFrames
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.errors import Conflict
from gasworks.domain.frames import UplinkFrame
from gasworks.domain.meter_messages import Alarm
from gasworks.entrypoints.cli.bulk_demo import bulk_outcome_holds, run_bulk_city
from gasworks.entrypoints.workers.batch_worker import BatchWorker
from gasworks.services import accounts, bulk_accounts, meter_keys
from gasworks.services.bulk_uplinks import handle_uplinks
from gasworks.sim.bulk_city import BulkCity, BulkSimulation
from gasworks.sim.meter import SimulatedMeter
from tests.support import handle_frame

FRAMES = SealedFrames()


def read(items: list[tuple[str, bytes]]) -> list[tuple[str, UplinkFrame]]:
    """Frames off the wire read as the batch worker's edge reads them, before `handle_uplinks`."""
    return [(serial, cjt188.read_uplink(payload)) for serial, payload in items]


def opening(i: int, kind: MeterKind = MeterKind.IOT) -> accounts.OpenAccount:
    return accounts.OpenAccount(f"43{i:08d}", "王芳", f"蒸湘苑 {i} 栋", "蒸湘苑", "G-01", "13800000000", f"{30_000_000_000_000 + i:014d}", kind, location=(26.9, 112.57))


def rows_of(system: System, account_no: str, serial: str) -> dict:
    """Everything opening an account writes, without what differs by nature (key bytes, times, ids)."""
    with system.engine.connect() as c:

        def one(table, column, value, drop=()):  # noqa: ANN001, ANN202
            row = c.execute(select(table).where(column == value)).mappings().first()
            return None if row is None else {k: v for k, v in row.items() if k not in drop and k not in ("account_no", "serial", "code", "subject")}

        audits = c.execute(select(t.audit_log.c.action, t.audit_log.c.actor, t.audit_log.c.detail).where(t.audit_log.c.subject.in_([f"account:{account_no}", f"meter:{serial}"])).order_by(t.audit_log.c.action)).all()
        return {
            "customer": one(t.customers, t.customers.c.account_no, account_no, drop=("created_at", "name", "address")),
            "meter": one(t.meters, t.meters.c.serial, serial),
            "ledger": one(t.ledger_accounts, t.ledger_accounts.c.code, f"prepaid:{account_no}"),
            "security": one(t.meter_frame_security, t.meter_frame_security.c.serial, serial),
            "key": one(t.meter_keys, t.meter_keys.c.serial, serial, drop=("key_sealed", "created_at")),
            "audit": [(a.action, a.actor, {k: v for k, v in a.detail.items() if k != "meter_serial"}) for a in audits],
        }


@pytest.mark.parametrize("kind", [MeterKind.IOT, MeterKind.CARD])
def test_bulk_opening_writes_what_opening_one_by_one_writes(system: System, kind: MeterKind) -> None:
    accounts.open_account(opening(1, kind), system.new_uow(), actor="tester")
    one_by_one_key = meter_keys.export_key(opening(1).meter_serial, system.new_uow(), actor="tester") if kind == MeterKind.IOT else None
    exported = bulk_accounts.open_accounts([opening(2, kind)], system.new_uow(), actor="tester", export_keys=True)

    assert rows_of(system, opening(2).account_no, opening(2).meter_serial) == rows_of(system, opening(1).account_no, opening(1).meter_serial)
    if kind == MeterKind.IOT:  # the key exported is the one gasworks keeps, sealed, for that meter
        assert [k.serial for k in exported] == [opening(2).meter_serial] and one_by_one_key is not None
        assert meter_keys.export_key(opening(2).meter_serial, system.new_uow(), actor="tester").key == exported[0].key
    else:
        assert exported == []


def test_a_batch_with_one_account_already_open_opens_none(system: System) -> None:
    accounts.open_account(opening(5), system.new_uow(), actor="tester")
    with pytest.raises(Conflict) as refused:
        bulk_accounts.open_accounts([opening(4), opening(5), opening(6)], system.new_uow(), actor="tester")
    assert refused.value.code == "ACCOUNT_EXISTS"
    with system.engine.connect() as c:
        assert c.execute(select(t.customers.c.account_no).order_by(t.customers.c.account_no)).scalars().all() == [opening(5).account_no]


def keyed_meters(system: System, n: int) -> list[SimulatedMeter]:
    keys = bulk_accounts.open_accounts([opening(i) for i in range(n)], system.new_uow(), actor="tester", export_keys=True)
    meters = []
    for key in keys:
        meter = SimulatedMeter(key.serial, credit_litres=5_000, battery_mv=3_600)
        meter.install_key(key)
        meters.append(meter)
    return meters


def meter_row(system: System, serial: str) -> dict:
    with system.engine.connect() as c:
        row = c.execute(select(t.meters).where(t.meters.c.serial == serial)).mappings().one()
        security = c.execute(select(t.meter_frame_security).where(t.meter_frame_security.c.serial == serial)).mappings().one()
    return {k: v for k, v in {**row, **security}.items() if k not in ("serial", "account_no")}


def test_a_batch_of_reports_leaves_each_meter_as_one_report_at_a_time_would(system: System) -> None:
    one, batched, low = keyed_meters(system, 3)
    low.battery_mv = 3_300
    low.alarms = Alarm.LOW_BATTERY
    now = system.clock.now()
    handle_frame(one.serial, one.report(now), system.new_uow())
    outcome = handle_uplinks(read([(batched.serial, batched.report(now)), (low.serial, low.report(now))]), system.new_uow, FRAMES)

    assert outcome.in_batch == 2 and outcome.one_by_one == 0 and all(o.accepted for o in outcome.outcomes)
    assert meter_row(system, batched.serial) == meter_row(system, one.serial)
    with system.new_uow() as uow:
        assert {str(a.kind) for a in uow.alerts.list(limit=10)} == {"METER_LOW_BATTERY"}


def test_a_replayed_a_forged_and_a_foreign_frame_in_a_batch_are_refused_and_recorded(system: System) -> None:
    honest, victim = keyed_meters(system, 2)
    now = system.clock.now()
    first = honest.report(now)
    assert handle_uplinks(read([(honest.serial, first)]), system.new_uow, FRAMES).in_batch == 1
    system.clock.move_to(now + timedelta(hours=1))
    forged = bytearray(victim.report(now))
    forged[-3] ^= 0x01  # the last MAC byte, the checksum made right again: only the MAC can tell
    forged[-2] = cjt188.checksum(bytes(forged[2:-2]))
    outcome = handle_uplinks(read([(honest.serial, first), (victim.serial, bytes(forged)), (victim.serial, honest.report(now))]), system.new_uow, FRAMES)

    assert [o.accepted for o in outcome.outcomes] == [False, False, False] and outcome.in_batch == 0
    with system.engine.connect() as c:
        codes = sorted(c.execute(select(t.intake_rejections.c.code)).scalars())
    assert codes == ["FOREIGN_FRAME", "FRAME_MAC_INVALID", "FRAME_REPLAYED"]


def test_the_batch_worker_refuses_and_records_a_frame_it_cannot_read_and_takes_the_rest_in_its_batch(system: System) -> None:
    [meter] = keyed_meters(system, 1)
    garbage = bytes.fromhex("fefe68300100000000000004840316")  # checksum wrong: read at the worker's edge, refused there
    transport = LoopbackTransport()
    transport.send_uplink(meter.serial, garbage)
    transport.send_uplink(meter.serial, meter.report(system.clock.now()))
    worker = BatchWorker(system, transport, concurrency=1)
    try:
        assert worker.drain_uplinks() == 2
    finally:
        worker.close()

    assert (worker.taken_in_batches, worker.taken_one_by_one) == (1, 1)
    with system.new_uow() as uow:
        [rejection] = uow.rejections.list(limit=5, channel_id="meters")
        assert uow.meters.get(meter.serial).last_report_at is not None
    assert rejection["code"] == "MALFORMED_FRAME" and rejection["request_summary"] == {"topic_serial": meter.serial, "frame_hex": garbage.hex()}


def test_a_small_city_kept_in_arrays_pays_reports_and_holds_its_money(system: System) -> None:
    city = BulkCity(400, seed=5, iot_percent=70)
    sim = BulkSimulation(system, city, start=system.clock.now())
    sim.open_accounts()
    try:
        outcome = sim.run(2)
    finally:
        sim.close()

    assert outcome.ledger is not None and outcome.ledger.ok, outcome.ledger.findings
    assert outcome.truth_violations == []
    assert outcome.payments_made > 0 and outcome.payments_booked == outcome.payments_made  # each exactly once
    assert outcome.ledger.payments_by_state["booked"][0] == outcome.payments_made
    assert outcome.reports_sent == 2 * outcome.iot_meters and outcome.reports_in_batches > outcome.iot_meters
    assert 0 < outcome.purchases_proven_applied <= outcome.purchases_applied_at_meters


def test_the_large_city_demo_shows_progress_the_outcome_and_the_money_check(system: System, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_bulk_city(system, households=300, days=1, seed=2, iot_percent=60, begin=system.clock.now(), database_url=str(system.engine.url))

    shown = capsys.readouterr().out
    assert bulk_outcome_holds(outcome)
    assert "reports and payments" in shown and "money check (gasworks check): holds" in shown and "peak RSS" in shown
    assert f"{outcome.reports_sent:,}" in shown
