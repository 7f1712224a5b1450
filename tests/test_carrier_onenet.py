"""OneNET pushes: taken only when signed with our token, then held to the same rules as CTWing's."""

import json
from collections.abc import Iterator

import httpx
import pytest

from gasworks.adapters.meters.carriers import onenet
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform
from gasworks.domain.clock import FixedClock
from gasworks.entrypoints.api.app import create_app
from gasworks.services import carriers, meter_keys
from gasworks.sim.meter import SimulatedMeter
from tests.support import served_in_thread, set_up

TOKEN = "onenet-token-0123456789abcdefabcd"
SERIAL, DEV_ID = "00000000000001", 12345


@pytest.fixture
def onenet_api(database_url: str, clock: FixedClock) -> Iterator[tuple[System, str, SimulatedMeter]]:
    system = bootstrap(Settings(database_url=database_url, onenet_push_token=TOKEN), clock=clock)
    set_up(system)
    carriers.register_device(CarrierDevice(SERIAL, CarrierPlatform.ONENET, str(DEV_ID), "10000001", "", 86_400, clock.now()), system.new_uow(), actor="test", ttl_margin_s=7_200)
    meter = SimulatedMeter(SERIAL)
    meter.install_key(meter_keys.export_key(SERIAL, system.new_uow(), actor="test"))
    with served_in_thread(create_app(system)) as api:
        yield system, f"{api}/v1/carriers/onenet/push", meter
    system.engine.dispose()


def signed(msg: dict, *, token: str = TOKEN, nonce: str = "2Xy9Qz1a") -> bytes:
    text = json.dumps(msg, separators=(",", ":"))
    return json.dumps({"msg": msg, "nonce": nonce, "msg_signature": onenet.signature(token, nonce, text)}).encode()


def test_signature_matches_a_vector_computed_independently():
    # printf '%s' '<token>2Xy9Qz1{"type":2,...}' | openssl dgst -md5 -binary | base64
    msg = '{"type":2,"dev_id":12345,"status":1,"login_type":10,"at":1795000000000}'
    assert onenet.signature(TOKEN, "2Xy9Qz1", msg) == "CG36+OGe23DgB5VijLPTtA=="


def test_a_signed_report_is_taken_once_and_an_unsigned_one_refused_403_and_recorded(onenet_api):
    system, url, meter = onenet_api
    report = {"type": 1, "dev_id": DEV_ID, "ds_id": "3200_0_5505", "at": 1_795_000_000_000, "value": meter.report(system.clock.now()).hex()}
    forged = httpx.post(url, content=signed(report, token="someone-elses-token-000000"))
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "PUSH_SIGNATURE_INVALID"
    with system.new_uow() as uow:
        assert uow.rejections.list(limit=5, channel_id="onenet")[0]["code"] == "PUSH_SIGNATURE_INVALID"
        assert uow.meters.get(SERIAL).last_report_at is None
    first, again = httpx.post(url, content=signed(report)), httpx.post(url, content=signed(report))
    assert first.json()["taken"] is True and again.json()["duplicate"] is True
    with system.new_uow() as uow:
        assert uow.meters.get(SERIAL).last_report_at is not None


def test_the_platforms_url_check_is_answered_only_under_our_token(onenet_api):
    _, url, _ = onenet_api
    good = httpx.get(url, params={"msg": "hello-onenet", "nonce": "abcdefgh", "signature": onenet.signature(TOKEN, "abcdefgh", "hello-onenet")})
    assert good.status_code == 200 and good.text == "hello-onenet"
    bad = httpx.get(url, params={"msg": "hello-onenet", "nonce": "abcdefgh", "signature": onenet.signature("wrong-token-0000000", "abcdefgh", "hello-onenet")})
    assert bad.status_code == 403


def test_an_unreadable_frame_in_a_good_push_is_refused_under_the_devices_meter_and_kept_as_received(onenet_api):
    system, url, _ = onenet_api
    garbage = bytes.fromhex("fefe68300100000000000004840316")  # checksum wrong: read where the push arrives, refused there
    answer = httpx.post(url, content=signed({"type": 1, "dev_id": DEV_ID, "ds_id": "3200_0_5505", "at": 1_795_000_000_002, "value": garbage.hex()}))
    assert answer.status_code == 200 and answer.json()["taken"] is False and answer.json()["code"] == "MALFORMED_FRAME"
    with system.new_uow() as uow:
        [rejection] = uow.rejections.list(limit=5, channel_id="meters")
    assert rejection["code"] == "MALFORMED_FRAME" and rejection["request_summary"] == {"topic_serial": SERIAL, "frame_hex": garbage.hex()}
