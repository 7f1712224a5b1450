"""The dispatcher at broker speed, on real PostgreSQL and the machine's Mosquitto: batches claimed
by several workers at once, the bounded in-flight window, and downlink counters that never repeat."""

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from gasworks.adapters.db.meter_keys import UnsealedKeys
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import MqttTransport, TransportError
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.meter_messages import WritePurchase
from gasworks.entrypoints.cli.main import app
from gasworks.services import accounts, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.delivery import dispatch_due, dispatch_meter
from gasworks.services.intake import accept_payment
from gasworks.sim.fleet import MqttFleet
from gasworks.sim.meter import SimulatedMeter
from tests.broker_rig import Client
from tests.conftest import make_system
from tests.support import handle_frame, set_up

METERS = 24
WAIT_S = 20.0


def _serial(i: int) -> str:
    return f"{20_000_000_000_000 + i:014d}"


@pytest.fixture
def fleet_system(postgres_only_url, clock) -> Iterator[tuple[System, list[SimulatedMeter]]]:
    """METERS keyed IoT meters on PostgreSQL, each with its firmware twin holding its key."""
    system = make_system(postgres_only_url, clock)
    set_up(system)
    meters = []
    for i in range(METERS):
        serial = _serial(i)
        accounts.open_account(accounts.OpenAccount(f"4303{i:06d}", "王五", "", "华新苑", "G-03", "13900000000", serial, MeterKind.IOT), system.new_uow(), actor="test")
        meter = SimulatedMeter(serial, awake=True)
        meter.install_key(meter_keys.export_key(serial, system.new_uow(), actor="test"))
        meters.append(meter)
    yield system, meters
    system.engine.dispose()


def _pay_every_meter(system: System, round_: int) -> None:
    for i in range(METERS):
        accept_payment(PaymentNotice("wo-wallet", f"S{round_}-{i}", 3_000 + round_, None, account_no=f"4303{i:06d}"), system.new_uow())


def _wake_all(system: System, meters: list[SimulatedMeter]) -> None:
    """Each meter reports (straight into the service, as a worker would hand it on): its window opens."""
    for meter in meters:
        assert handle_frame(meter.serial, meter.report(system.clock.now()), system.new_uow()).accepted


def _started(url: str, prefix: str) -> MqttTransport:
    transport = MqttTransport(url, prefix=prefix, client_id=f"gw-{uuid.uuid4().hex[:8]}")
    transport.start()
    assert transport.subscribed
    return transport


def _race(system: System, transports: list[MqttTransport], batch_max: int) -> list[list[int]]:
    """Every transport's worker runs dispatch passes at once until none finds work; the command ids each sent."""
    barrier = threading.Barrier(len(transports))
    sent: list[list[int]] = [[] for _ in transports]

    def work(k: int) -> None:
        barrier.wait()
        while batch := dispatch_due(system.new_uow(), transports[k], batch_max=batch_max):
            sent[k] += [c.id for c in batch]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(transports))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return sent


def _frames_heard(fleet: MqttFleet, frames: list[tuple[str, bytes]], expected: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(frames) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # anything sent twice would arrive about now
    deadline = time.monotonic() + WAIT_S
    while not fleet.idle() and time.monotonic() < deadline:
        time.sleep(0.02)


def _handle_uplinks(system: System, transports: list[MqttTransport], expected: int) -> None:
    """The meters' acknowledgements, as the workers' main loops take them from their shares."""
    handled = 0
    deadline = time.monotonic() + WAIT_S
    while handled < expected and time.monotonic() < deadline:
        for transport in transports:
            while (item := transport.uplinks.get(0)) is not None:
                if item[0]:
                    handle_frame(item[0], item[1], system.new_uow())
                    handled += 1
        time.sleep(0.02)
    assert handled == expected, f"{handled} of {expected} acknowledgements came back"


def test_two_workers_claiming_the_same_due_meters_never_send_a_command_twice(fleet_system, broker_url):
    system, meters = fleet_system
    prefix = f"test-{uuid.uuid4().hex[:10]}/meters"
    frames: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def heard(serial: str, frame: bytes, at: float) -> None:
        with lock:
            frames.append((serial, frame))

    fleet = MqttFleet(broker_url, prefix=prefix, meters=meters, on_frame=heard)
    fleet.start()
    transports = [_started(broker_url, prefix) for _ in range(2)]
    try:
        _wake_all(system, meters)
        for round_ in range(1, 4):
            _pay_every_meter(system, round_)
            sent = _race(system, transports, batch_max=5)  # small batches: the two interleave many times
            assert sorted(sent[0] + sent[1]) == sorted(set(sent[0] + sent[1])), "a command was sent by both workers"
            assert len(sent[0]) + len(sent[1]) == METERS
            _frames_heard(fleet, frames, METERS * round_)
            assert len(frames) == METERS * round_, f"{len(frames)} frames reached the meters for {METERS * round_} purchases"
            _handle_uplinks(system, transports, METERS)
        for meter in meters:
            assert [seq for seq, _ in meter.applied] == [1, 2, 3], meter.serial
        assert check_ledger(system.new_uow()).ok
    finally:
        for transport in transports:
            transport.stop()
        fleet.stop()


def test_downlink_counters_never_repeat_across_two_workers(fleet_system, postgres_only_url, clock, broker_url):
    """Two worker processes' worth of state (an engine and a key cache each) on one database."""
    system, meters = fleet_system
    other = make_system(postgres_only_url, clock)  # the second worker: its own connections and its own cache of keys
    prefix = f"test-{uuid.uuid4().hex[:10]}/meters"
    counters: dict[str, list[int]] = {m.serial: [] for m in meters}
    lock = threading.Lock()

    def heard(serial: str, frame: bytes, at: float) -> None:
        with lock:
            counters[serial].append(cjt188.decode_sealed(frame).counter)

    fleet = MqttFleet(broker_url, prefix=prefix, meters=meters, on_frame=heard)
    fleet.start()
    transports = [_started(broker_url, prefix) for _ in range(2)]
    systems = [system, other]
    try:
        _wake_all(system, meters)
        for round_ in range(1, 4):
            _pay_every_meter(system, round_)
            barrier = threading.Barrier(2)

            def work(k: int) -> None:
                barrier.wait()
                while dispatch_due(systems[k].new_uow(), transports[k], batch_max=3):
                    pass

            threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            _frames_heard(fleet, [(s, b"") for s, cs in counters.items() for _ in cs], METERS * round_)
            _handle_uplinks(system, transports, METERS)
        for meter in meters:
            seen = counters[meter.serial]
            assert len(seen) == 3 and len(set(seen)) == 3, f"{meter.serial} counters {seen}"
            assert seen == sorted(seen), f"{meter.serial} counters went backwards: {seen}"
            assert meter.refused == [] and [seq for seq, _ in meter.applied] == [1, 2, 3], f"{meter.serial}: {meter.refused}, counters {seen}"
    finally:
        for transport in transports:
            transport.stop()
        fleet.stop()
        other.engine.dispose()


class _KilledAfterPublishing(BaseException):
    """The process dies between handing the frame to the broker and committing that it was sent."""


class _RecordingPublisher:
    def __init__(self, *, die: bool = False) -> None:
        self.frames: list[bytes] = []
        self.die = die

    def publish(self, serial: str, payload: bytes) -> None:
        self.frames.append(payload)
        if self.die:
            raise _KilledAfterPublishing


def test_a_frame_published_by_a_dispatch_that_never_committed_lends_its_counter_to_no_later_frame(fleet_system):
    system, meters = fleet_system
    meter = meters[0]
    _wake_all(system, [meter])
    _pay_every_meter(system, 1)
    dying = _RecordingPublisher(die=True)
    with pytest.raises(_KilledAfterPublishing):
        dispatch_meter(meter.serial, system.new_uow(), dying)
    again = _RecordingPublisher()
    assert dispatch_meter(meter.serial, system.new_uow(), again) is not None  # not recorded sent: it goes again
    first, second = (cjt188.decode_sealed(f) for f in (dying.frames[0], again.frames[0]))
    assert isinstance(cjt188.message_of(first.frame), WritePurchase)
    assert second.counter > first.counter, "the resent frame reused the counter of one already on the wire"
    assert meter.on_downlink(dying.frames[0])  # the meter took the first (it answers) ...
    assert meter.on_downlink(again.frames[0])  # ... and the second is no replay to it
    assert meter.refused == []


def test_the_in_flight_window_never_holds_more_frames_than_its_bound(broker_url):
    prefix = f"test-{uuid.uuid4().hex[:10]}/meters"
    listener = Client(broker_url)
    listener.connect()
    listener.subscribe(f"{prefix}/+/down")
    transport = MqttTransport(broker_url, prefix=prefix, inflight_max=4)
    transport.start()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, transport.in_flight)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        barrier = threading.Barrier(4)

        def publish(k: int) -> None:
            barrier.wait()
            for i in range(100):
                transport.publish(_serial(k), f"{k}:{i}".encode())

        threads = [threading.Thread(target=publish, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        heard = listener.wait_for(b"3:99")
        deadline = time.monotonic() + WAIT_S
        while len(listener.heard) < 400 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert heard
        assert sorted(p for _, p in listener.heard) == sorted(f"{k}:{i}".encode() for k in range(4) for i in range(100))  # each once
        assert transport.in_flight_peak <= 4 and peak <= 4
        assert transport.in_flight_peak == 4, "400 frames from 4 threads never filled a window of 4: it was not in the way"
        deadline = time.monotonic() + WAIT_S
        while transport.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert transport.in_flight == 0  # every PUBACK freed its slot
    finally:
        stop.set()
        watcher.join()
        transport.stop()
        listener.close()


def test_a_worker_without_a_broker_sends_nothing_and_marks_nothing_sent(fleet_system, broker_url):
    system, meters = fleet_system
    _wake_all(system, meters[:2])
    _pay_every_meter(system, 1)
    transport = MqttTransport(broker_url, prefix=f"test-{uuid.uuid4().hex[:10]}/meters")  # never started: not connected
    with pytest.raises(TransportError):
        dispatch_due(system.new_uow(), transport, batch_max=10)
    with system.new_uow() as uow:
        assert all(c.sends == 0 for c in uow.meter_commands.for_meter(meters[0].serial, route=MeterKind.IOT))


def test_the_cache_of_opened_meter_keys_keeps_at_most_its_bound_and_forgets_the_least_used():
    cache = UnsealedKeys(entries_max=3)
    for i in range(3):
        cache.put(_serial(i), 1, "site", bytes([i]) * 16)
    assert cache.get(_serial(0), 1, "site") == bytes(16)  # used: the newest now
    cache.put(_serial(3), 1, "site", bytes([3]) * 16)
    assert len(cache) == 3
    assert cache.get(_serial(1), 1, "site") is None  # the least recently used went
    assert cache.get(_serial(0), 1, "site") is not None
    assert cache.get(_serial(0), 1, "another site key") is None  # opened under another site key: not this one's
    cache.forget_meter(_serial(0))
    assert cache.get(_serial(0), 1, "site") is None


def test_several_worker_processes_on_sqlite_are_refused_with_a_reason(tmp_path):
    result = CliRunner().invoke(app, ["worker", "--database-url", f"sqlite:///{tmp_path / 'one.db'}", "--mqtt-url", "mqtt://127.0.0.1:1883", "--processes", "2"])
    assert result.exit_code == 2
    assert "ONE_WORKER_ON_SQLITE" in result.output
