"""Meters behind CTWing: signed commands with an explicit TTL, pushes taken once and bound to their device.

The platform is the local stub (sim/stubs/ctwing.py): a real HTTP server that checks our signature
with its own reading of the SDK, caches commands until the simulated meter wakes, and pushes to
gasworks' real HTTP server, retrying anything but 200.
"""

import base64
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from gasworks.adapters.meters.carriers import ctwing
from gasworks.adapters.meters.transport import TransportError
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform, command_ttl_s
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.clock import FixedClock
from gasworks.domain.delivery import CommandState
from gasworks.domain.errors import InvalidInput
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.api.carrier_routes import keep_secrets_out_of_access_log
from gasworks.entrypoints.workers.worker import Worker
from gasworks.services import accounts, carriers, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.sim.city import build_city
from gasworks.sim.meter import SimulatedMeter
from gasworks.sim.outcome import summarise
from gasworks.sim.stubs.ctwing import CtwingStub
from gasworks.sim.world import FaultRates, Simulation, simulation_start
from tests.support import ACCOUNT_NO, handle_frame, served_in_thread, set_up
from tests.test_simulation import assert_faults_caught_and_truth_kept

SERIAL = "00000000000001"
DEVICE_ID = "5f2c1a9e0b7d4c3f8e6a1b2c3d4e5f60"
PRODUCT_ID = "10035737"
IMEI = "860803030676429"
PUSH_SECRET = "push-secret-0123456789abcdefghijklmnop"
APP_KEY, APP_SECRET, MASTER_KEY = "AMQROxaUNh", "un2puu02Ml", "ffd9c7a217004acc87f2df46c348e8d2"
DAY_S = 86_400
MARGIN_S = 7_200


@dataclass
class Platform:
    system: System
    stub: CtwingStub
    api: str  # gasworks' base URL
    meter: SimulatedMeter
    worker: Worker

    @property
    def push_url(self) -> str:
        return f"{self.api}/v1/carriers/ctwing/{PUSH_SECRET}/push"

    def orders(self, payment_id: str):  # noqa: ANN201
        with self.system.new_uow() as uow:
            return uow.meter_commands.for_payment(payment_id)

    def rejections(self, channel_id: str = "ctwing") -> list[dict]:
        with self.system.new_uow() as uow:
            return uow.rejections.list(limit=50, channel_id=channel_id)

    def settle(self) -> None:
        self.stub.drain()
        for _ in range(20):
            if self.worker.run_once() == 0:
                break
        self.stub.drain()


@pytest.fixture
def platform(database_url: str, clock: FixedClock) -> Iterator[Platform]:
    stub = CtwingStub(app_key=APP_KEY, app_secret=APP_SECRET, master_key=MASTER_KEY, now=clock.now, clock_offset_ms=20 * 60 * 1000)
    stub.start()
    settings = Settings(
        database_url=database_url, ctwing_base_url=stub.base_url, ctwing_app_key=APP_KEY, ctwing_app_secret=APP_SECRET,
        ctwing_master_key=MASTER_KEY, ctwing_push_secret=PUSH_SECRET, carrier_command_ttl_margin_s=MARGIN_S,
    )  # fmt: skip
    system = bootstrap(settings, clock=clock)
    set_up(system)
    carriers.register_device(CarrierDevice(SERIAL, CarrierPlatform.CTWING, DEVICE_ID, PRODUCT_ID, IMEI, DAY_S, clock.now()), system.new_uow(), actor="test", ttl_margin_s=MARGIN_S)
    meter = SimulatedMeter(SERIAL)
    meter.install_key(meter_keys.export_key(SERIAL, system.new_uow(), actor="test"))
    stub.add_device(DEVICE_ID, PRODUCT_ID, IMEI, meter)
    with served_in_thread(create_app(system)) as api:
        stub.push_url = f"{api}/v1/carriers/ctwing/{PUSH_SECRET}/push"
        worker = Worker(system, system.meter_transport())
        yield Platform(system, stub, api, meter, worker)
        worker.transport.stop()
    stub.stop()
    system.engine.dispose()


def pay(system: System, fen: int, txn: str = "T1") -> str:
    acceptance = accept_payment(PaymentNotice("wo-wallet", txn, fen, None, account_no=ACCOUNT_NO), system.new_uow())
    return acceptance.payment_id


def report_push(frame: bytes, *, device_id: str = DEVICE_ID, timestamp_ms: int = 1_795_000_000_000) -> bytes:
    return json.dumps({
        "upPacketSN": "", "upDataSN": "", "topic": "v1/up/ad", "timestamp": timestamp_ms, "tenantId": "10000001", "serviceId": "",
        "protocol": "lwm2m", "productId": PRODUCT_ID, "payload": {"APPdata": base64.b64encode(frame).decode()}, "messageType": "dataReport",
        "deviceType": "", "deviceId": device_id, "assocAssetId": "", "IMSI": "undefined", "IMEI": IMEI,
    }).encode()  # fmt: skip


# ---- signing -------------------------------------------------------------------------------------


def test_signature_matches_a_vector_computed_independently():
    # The string to sign, written out by hand from the SDK's rule, was signed with OpenSSL:
    #   printf 'application:AMQROxaUNh\ntimestamp:1700000000123\nMasterKey:ffd9...e8d2\n{body}\n' \
    #     | openssl dgst -sha1 -hmac 'un2puu02Ml' -binary | base64
    body = '{"content":{"payload":"FEFE6830","dataType":2},"deviceId":"dev-1","operator":"gasworks","productId":10035737,"ttl":93600,"level":1}'
    text = ctwing.string_to_sign(application=APP_KEY, timestamp_ms="1700000000123", params={"MasterKey": MASTER_KEY}, body=body)
    assert text == f"application:{APP_KEY}\ntimestamp:1700000000123\nMasterKey:{MASTER_KEY}\n{body}\n"
    assert ctwing.signature(APP_SECRET, text) == "DIVlcxc3pQTVCTXelCJTDm5k80g="


def test_parameters_are_signed_sorted_by_name_and_an_empty_body_adds_no_line():
    text = ctwing.string_to_sign(application="a", timestamp_ms="1", params={"productId": "7", "MasterKey": "m", "deviceId": "d"}, body="")
    assert text == "application:a\ntimestamp:1\nMasterKey:m\ndeviceId:d\nproductId:7\n"


def test_the_stub_refuses_a_bad_signature_and_caches_nothing():
    stub = CtwingStub(app_key=APP_KEY, app_secret=APP_SECRET, master_key=MASTER_KEY)
    stub.add_device(DEVICE_ID, PRODUCT_ID, IMEI, SimulatedMeter(SERIAL))
    stub.start()
    try:
        forger = ctwing.CtwingClient(ctwing.CtwingCredentials(stub.base_url, APP_KEY, "not-the-secret", MASTER_KEY))
        with pytest.raises(TransportError, match="signature mismatch"):
            forger.create_command(device_id=DEVICE_ID, product_id=PRODUCT_ID, frame=b"\x68\x30", ttl_s=93_600, operator="x")
        assert stub.calls[-1].code == 1005 and stub.cached(DEVICE_ID) == []
        honest = ctwing.CtwingClient(ctwing.CtwingCredentials(stub.base_url, APP_KEY, APP_SECRET, MASTER_KEY))
        created = honest.create_command(device_id=DEVICE_ID, product_id=PRODUCT_ID, frame=b"\x68\x30", ttl_s=93_600, operator="x")
        assert stub.cached(DEVICE_ID)[0].command_id == created.command_id
    finally:
        stub.stop()


def test_timestamps_are_corrected_by_the_platforms_clock_offset():
    stub = CtwingStub(app_key=APP_KEY, app_secret=APP_SECRET, master_key=MASTER_KEY, clock_offset_ms=-40 * 60 * 1000)
    stub.add_device(DEVICE_ID, PRODUCT_ID, IMEI, SimulatedMeter(SERIAL))
    stub.start()
    try:
        client = ctwing.CtwingClient(ctwing.CtwingCredentials(stub.base_url, APP_KEY, APP_SECRET, MASTER_KEY))
        client.offset_ms, client.synced_at = 0, time.monotonic()  # as if just measured, wrongly: our clock taken for the platform's
        with pytest.raises(TransportError, match="timestamp"):
            client.create_command(device_id=DEVICE_ID, product_id=PRODUCT_ID, frame=b"\x68", ttl_s=600, operator="x")
        client.create_command(device_id=DEVICE_ID, product_id=PRODUCT_ID, frame=b"\x68", ttl_s=600, operator="x")  # measured again after the refusal
        assert abs(client.offset_ms + 40 * 60 * 1000) < 5_000
    finally:
        stub.stop()


# ---- TTL -----------------------------------------------------------------------------------------


def test_command_ttl_is_the_report_interval_plus_the_margin_never_the_platform_default():
    assert command_ttl_s(DAY_S, ttl_margin_s=MARGIN_S) == 93_600  # a daily meter: 26 h, not CTWing's 2 h
    with pytest.raises(InvalidInput) as beyond:
        command_ttl_s(10 * DAY_S, ttl_margin_s=MARGIN_S)  # past CTWing's 864,000 s: refused, not clamped
    assert beyond.value.code == "TTL_BEYOND_PLATFORM"


# ---- pushes ---------------------------------------------------------------------------------------


def test_a_push_to_a_wrong_secret_is_refused_404_and_recorded_without_the_secret(platform):
    reply = httpx.post(f"{platform.api}/v1/carriers/ctwing/guessed-secret-00000000000000000000/push", content=report_push(platform.meter.report(platform.system.clock.now())))
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "UNKNOWN_PUSH_URL"
    refused = platform.rejections()
    assert refused[0]["code"] == "UNKNOWN_PUSH_URL"
    assert "guessed-secret" not in json.dumps(refused[0]["request_summary"])
    with platform.system.new_uow() as uow:
        assert uow.meters.get(SERIAL).last_report_at is None  # nothing taken


def test_a_duplicate_push_is_answered_200_and_taken_once(platform):
    body = report_push(platform.meter.report(platform.system.clock.now()))
    first, retry = httpx.post(platform.push_url, content=body), httpx.post(platform.push_url, content=body)
    assert first.status_code == retry.status_code == 200
    assert first.json() == {"taken": True, "code": "TAKEN", "duplicate": False, "what": "report"}
    assert retry.json()["duplicate"] is True and retry.json()["taken"] is True
    with platform.system.new_uow() as uow:
        assert uow.meter_keys.get_security(SERIAL).uplink_counter_seen == 1
    assert platform.rejections("meters") == []  # the retry never reached the frame checks (no FRAME_REPLAYED)


def test_a_device_claiming_another_meters_serial_is_refused_and_recorded(platform):
    forged = SimulatedMeter("00000000000009").report(platform.system.clock.now())  # another meter's address
    reply = httpx.post(platform.push_url, content=report_push(forged))
    assert reply.status_code == 200 and reply.json()["taken"] is False and reply.json()["code"] == "CARRIER_SERIAL_MISMATCH"
    unknown = httpx.post(platform.push_url, content=report_push(platform.meter.report(platform.system.clock.now()), device_id="not-registered"))
    assert unknown.json()["code"] == "UNKNOWN_CARRIER_DEVICE"
    assert {r["code"] for r in platform.rejections()} == {"CARRIER_SERIAL_MISMATCH", "UNKNOWN_CARRIER_DEVICE"}
    with platform.system.new_uow() as uow:
        assert uow.meters.get(SERIAL).last_report_at is None


def test_the_frame_inside_a_push_still_needs_its_own_mac(platform):
    unsealed = SimulatedMeter(SERIAL).report(platform.system.clock.now())  # right address, no key: plain frame
    reply = httpx.post(platform.push_url, content=report_push(unsealed))
    # Its last 13 bytes are read as key version, counter and MAC: whichever check trips, it is refused.
    assert reply.json()["taken"] is False and reply.json()["code"] in {"FRAME_KEY_VERSION_UNKNOWN", "FRAME_MAC_INVALID"}
    assert platform.rejections("meters")[0]["code"] == reply.json()["code"]
    with platform.system.new_uow() as uow:
        assert uow.meters.get(SERIAL).last_report_at is None


def test_a_push_that_is_not_ctwings_shape_is_refused_400(platform):
    reply = httpx.post(platform.push_url, content=b'{"messageType": "dataReport", "deviceId": "x", "timestamp": 1, "payload": {"APPdata": "%%%"}}')
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "MALFORMED_PUSH"
    too_big = httpx.post(platform.push_url, content=b"{" + b" " * 9000 + b"}")
    assert too_big.status_code == 413


# ---- a purchase through the platform ---------------------------------------------------------------


def test_a_purchase_to_a_sleeping_meter_reaches_it_through_the_platform_and_is_applied_only_when_the_meter_shows_it(platform):
    system, stub, meter = platform.system, platform.stub, platform.meter
    payment_id = pay(system, 5_000)
    platform.settle()
    assert stub.calls == []  # asleep and never heard: nothing to send yet

    stub.wake(DEVICE_ID, listen=False)  # reports, then its module sleeps before we answer
    platform.settle()
    [order] = platform.orders(payment_id)
    assert order.state == CommandState.SENT
    [cached] = stub.cached(DEVICE_ID)
    assert cached.ttl_s == DAY_S + MARGIN_S == stub.calls[-1].ttl_s  # explicit: the platform's 7,200 s would expire first
    assert meter.applied == []

    system.clock.advance(timedelta(hours=23).total_seconds())  # next day: the platform still holds it
    meter.acks_to_lose = 1  # the meter applies it; its acknowledgement is lost on the way
    stub.wake(DEVICE_ID)
    platform.settle()
    assert meter.applied == [(1, order.volume_litres)]
    [order] = platform.orders(payment_id)
    assert order.state == CommandState.DELIVERED  # the module got it: not yet proof the meter applied it
    assert len(stub.calls) == 1  # delivered: not sent again before a newer report

    system.clock.advance(timedelta(hours=24).total_seconds())
    stub.wake(DEVICE_ID)  # this report shows purchase #1 applied
    platform.settle()
    [order] = platform.orders(payment_id)
    assert order.state == CommandState.APPLIED
    assert meter.applied == [(1, order.volume_litres)]  # applied once
    assert check_ledger(system.new_uow()).ok
    assert platform.rejections() == []


def test_a_command_the_platform_let_expire_is_sent_again_when_the_meter_is_back(platform):
    system, stub, meter = platform.system, platform.stub, platform.meter
    payment_id = pay(system, 5_000)
    stub.wake(DEVICE_ID, listen=False)
    platform.settle()
    assert len(stub.cached(DEVICE_ID)) == 1

    system.clock.advance(timedelta(hours=30).total_seconds())  # the meter missed a day: past the 26 h TTL
    stub.wake(DEVICE_ID)  # the platform drops the stale command (EXPIRED); the report opens a window
    platform.settle()  # so gasworks sends it again, the module listening, and the meter acknowledges
    [order] = platform.orders(payment_id)
    assert order.state == CommandState.APPLIED
    assert meter.applied == [(1, order.volume_litres)]
    assert [c.ttl_s for c in stub.calls] == [DAY_S + MARGIN_S] * 2
    with system.new_uow() as uow:
        statuses = [uow.carriers.command(CarrierPlatform.CTWING, str(n)).status.value for n in (1, 2)]
    assert statuses == ["EXPIRED", "DELIVERED"]


def test_a_meter_model_without_mac_is_taken_only_through_its_own_registered_device(platform):
    system, clock = platform.system, platform.system.clock
    plain_serial, plain_device = "00000000000003", "b7e1c0d2a3f4e5d6c7b8a9f0e1d2c3b4"
    accounts.open_account(
        accounts.OpenAccount("4301000003", "李四", "蒸湘区 2 栋 202", "华新苑", "G-01", "13812345679", plain_serial, MeterKind.IOT, meter_model="carrier-plain"),
        system.new_uow(), actor="test",
    )  # fmt: skip
    plain = SimulatedMeter(plain_serial)  # no key: its frames carry no MAC
    carriers.register_device(CarrierDevice(plain_serial, CarrierPlatform.CTWING, plain_device, PRODUCT_ID, "", DAY_S, clock.now()), system.new_uow(), actor="test", ttl_margin_s=MARGIN_S)

    through_its_device = httpx.post(platform.push_url, content=report_push(plain.report(clock.now()), device_id=plain_device))
    assert through_its_device.json()["taken"] is True  # the platform vouches for its device, the secret for the platform
    through_another = httpx.post(platform.push_url, content=report_push(plain.report(clock.now()), device_id=DEVICE_ID, timestamp_ms=1_795_000_000_001))
    assert through_another.json()["code"] == "CARRIER_SERIAL_MISMATCH"
    over_the_broker = handle_frame(plain_serial, plain.report(clock.now()), system.new_uow())  # no carrier: no MAC, no belief
    assert not over_the_broker.accepted and over_the_broker.what.startswith("FRAME_MAC_REQUIRED")


def test_push_keys_are_kept_a_week_then_forgotten(platform):
    body = report_push(platform.meter.report(platform.system.clock.now()))
    assert httpx.post(platform.push_url, content=body).json()["duplicate"] is False
    platform.system.clock.advance(timedelta(days=6).total_seconds())
    assert carriers.forget_old_pushes(platform.system.new_uow()) == 0
    assert httpx.post(platform.push_url, content=body).json()["duplicate"] is True
    platform.system.clock.advance(timedelta(days=2).total_seconds())
    assert carriers.forget_old_pushes(platform.system.new_uow()) == 1


def test_a_status_for_a_command_not_yet_known_asks_the_platform_to_come_back(platform):
    status = {"timestamp": 1_795_000_000_000, "tenantId": "10000001", "protocol": "lwm2m", "productId": PRODUCT_ID, "messageType": "commandResponse",
              "deviceId": DEVICE_ID, "taskId": 77, "result": {"resultCode": "DELIVERED", "resultDetail": ""}}  # fmt: skip
    first = httpx.post(platform.push_url, content=json.dumps(status).encode())
    assert first.status_code == 503 and first.json()["error"]["code"] == "CARRIER_COMMAND_NOT_YET_KNOWN"  # the send may still be committing
    retry = httpx.post(platform.push_url, content=json.dumps(status).encode())
    assert retry.status_code == 503  # not claimed: a retry is judged afresh, never answered "duplicate"
    assert {r["code"] for r in platform.rejections()} == {"CARRIER_COMMAND_NOT_YET_KNOWN"}


def test_the_push_secret_never_reaches_the_access_log():
    keep_secrets_out_of_access_log()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', ("1.2.3.4:5", "POST", f"/v1/carriers/ctwing/{PUSH_SECRET}/push", "1.1", 200), None)
    assert all(f.filter(record) for f in logging.getLogger("uvicorn.access").filters)
    assert PUSH_SECRET not in record.getMessage() and "/v1/carriers/ctwing/(secret)/push" in record.getMessage()


def test_a_faulty_city_with_a_share_of_its_meters_behind_ctwing_keeps_the_money_and_the_truth(postgres_only_url):
    start = simulation_start()
    settings = Settings(database_url=postgres_only_url, watchdog_interval_s=10**9, ctwing_push_secret=PUSH_SECRET)
    system = bootstrap(settings, clock=FixedClock(start))
    sim = Simulation(system, build_city(60, seed=5), faults=FaultRates.preset("heavy"), start=start, ctwing_share=0.5)
    try:
        outcome = sim.run(4)
        assert sim.ctwing is not None and len(sim.ctwing.device_of) > 5
    finally:
        sim.close()
    report = summarise(sim, outcome, hotline="12319")
    assert_faults_caught_and_truth_kept(outcome, report)
    with system.new_uow() as uow:
        assert uow.rejections.list(limit=10, channel_id="ctwing") == []
        delivered = [uow.carriers.latest_command(serial, seq) for serial in sim.ctwing.device_of for seq in range(256)]
    assert any(c is not None and c.status.value == "DELIVERED" for c in delivered)  # purchases went through the platform
    system.engine.dispose()
