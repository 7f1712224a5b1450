"""Card meters through kiosks, and the resident's truth: never "gas available" before the meter applied it."""

import re

import pytest
from fastapi.testclient import TestClient

from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from tests.delivery_rig import Rig
from tests.support import OTHER_ACCOUNT_NO, api_key, set_up

CARD_SERIAL = "00000000000002"
CARD = "IC0000000002"


@pytest.fixture
def env(system):
    set_up(system)
    client = TestClient(create_app(system))
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    auditor = {"Authorization": f"Bearer {api_key(system, Role.AUDITOR)}"}
    for kiosk_id, community, lat, lon in (("k-huaxin", "华新苑", 26.8930, 112.5720), ("k-far", "远方小区", 26.95, 112.65), ("k-near", "隔壁小区", 26.8935, 112.5725)):
        r = client.post("/v1/kiosks", headers=operator, json={"id": kiosk_id, "name": f"自助机 {kiosk_id}", "channel_id": "kiosk", "community": community, "latitude": lat, "longitude": lon})
        assert r.status_code == 201, r.text
    rig = Rig(system, LoopbackTransport())
    return rig, client, device, operator, auditor


def read(client, device, card_seq, applied_seq, card=CARD):
    return client.post("/v1/cards/reads", headers=device, json={"card_no": card, "meter_serial": CARD_SERIAL, "card_purchase_seq": card_seq, "meter_applied_seq": applied_seq})


def write(client, device, seq, after=None, card=CARD):
    return client.post("/v1/cards/writes", headers=device, json={"card_no": card, "meter_serial": CARD_SERIAL, "purchase_seq": seq, "card_purchase_seq_after": seq if after is None else after})


def delivery(client, auditor, payment_id):
    r = client.get(f"/v1/payments/{payment_id}", headers=auditor)
    assert r.status_code == 200, r.text
    return r.json()["delivery"]


def test_a_card_purchase_goes_read_write_applied_and_the_timeline_follows(env):
    rig, client, device, operator, auditor = env
    paid = rig.pay(10_000, OTHER_ACCOUNT_NO)
    shown = delivery(client, auditor, paid.payment_id)
    assert shown["status"] == "WAITING_FOR_CARD"
    assert [k["id"] for k in shown["nearest_kiosks"]][:1] == ["k-huaxin"]  # the resident's own community first
    first = read(client, device, 0, 0)
    assert first.status_code == 200, first.text
    assert [(p["purchase_seq"], p["volume_litres"]) for p in first.json()["to_write"]] == [(1, 33_444)]
    assert write(client, device, 1).json() == {"order_id": first.json()["to_write"][0]["order_id"], "purchase_seq": 1, "state": "written_to_card", "changed": True}
    assert delivery(client, auditor, paid.payment_id)["status"] == "CARD_WRITTEN"  # not gas yet: the card is not in the meter
    again = read(client, device, 1, 1)  # the resident inserted the card; the meter wrote back purchase #1
    assert again.json()["applied_now"] == [1] and again.json()["to_write"] == []
    shown = delivery(client, auditor, paid.payment_id)
    assert shown["status"] == "GAS_AVAILABLE"
    assert [s["key"] for s in shown["steps"] if s["done"]] == ["paid", "booked", "written_to_card", "applied"]
    assert check_ledger(rig.system.new_uow()).ok


def test_a_replayed_write_confirmation_changes_nothing(env):
    rig, client, device, *_ = env
    rig.pay(5_000, OTHER_ACCOUNT_NO)
    read(client, device, 0, 0)
    assert write(client, device, 1).json()["changed"] is True
    replay = write(client, device, 1)
    assert replay.status_code == 200 and replay.json()["changed"] is False
    with rig.system.new_uow() as uow:
        [order] = uow.meter_commands.recent(limit=5, serial=CARD_SERIAL)
        assert order.sends == 0 and order.state == "written_to_card"
        assert len(uow.meter_commands.get(order.id).events) == 2  # pending, written_to_card: nothing more


def test_purchases_are_written_in_serial_order_and_a_write_that_did_not_take_is_refused(env):
    rig, client, device, *_ = env
    rig.pay(3_000, OTHER_ACCOUNT_NO)
    rig.pay(4_000, OTHER_ACCOUNT_NO)
    answer = read(client, device, 0, 0).json()
    assert [p["purchase_seq"] for p in answer["to_write"]] == [1, 2]
    out_of_order = write(client, device, 2)
    assert out_of_order.status_code == 409 and out_of_order.json()["error"]["code"] == "CARD_WRITE_OUT_OF_ORDER"
    not_taken = write(client, device, 1, after=0)
    assert not_taken.status_code == 409 and not_taken.json()["error"]["code"] == "CARD_WRITE_NOT_TAKEN"
    assert write(client, device, 1).status_code == 200
    assert write(client, device, 2).status_code == 200


def test_a_card_pulled_out_before_the_write_took_is_written_again_on_the_next_read(env):
    rig, client, device, *_ = env
    rig.pay(5_000, OTHER_ACCOUNT_NO)
    read(client, device, 0, 0)
    write(client, device, 1)  # the device believed it wrote; the card says otherwise next time
    answer = read(client, device, 0, 0).json()
    assert [p["purchase_seq"] for p in answer["to_write"]] == [1]


def test_a_replaced_card_carries_the_counters_so_nothing_is_written_twice_or_lost(env):
    rig, client, device, operator, auditor = env
    first = rig.pay(3_000, OTHER_ACCOUNT_NO)
    second = rig.pay(4_000, OTHER_ACCOUNT_NO)
    read(client, device, 0, 0)
    write(client, device, 1)
    read(client, device, 1, 1)  # #1 applied by the meter
    write(client, device, 2)  # #2 on the card ... and the card is lost before it reaches the meter
    replaced = client.post(f"/v1/meters/{CARD_SERIAL}/card", headers=operator, json={"card_no": "IC0000000099", "reason": "lost"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json() == {"meter_serial": CARD_SERIAL, "card_no": "IC0000000099", "start_purchase_seq": 1, "to_rewrite": [2]}
    old = read(client, device, 2, 1)
    assert old.status_code == 409 and old.json()["error"]["code"] == "CARD_NOT_CURRENT"
    answer = read(client, device, 1, 1, card="IC0000000099").json()
    assert [p["purchase_seq"] for p in answer["to_write"]] == [2]
    write(client, device, 2, card="IC0000000099")
    read(client, device, 2, 2, card="IC0000000099")
    assert delivery(client, auditor, first.payment_id)["status"] == "GAS_AVAILABLE"
    assert delivery(client, auditor, second.payment_id)["status"] == "GAS_AVAILABLE"
    assert check_ledger(rig.system.new_uow()).ok


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"card_no": CARD, "meter_serial": CARD_SERIAL, "card_purchase_seq": 5, "meter_applied_seq": 0}, 409, "CARD_COUNTER_AHEAD"),
        ({"card_no": CARD, "meter_serial": CARD_SERIAL, "card_purchase_seq": 0, "meter_applied_seq": 1}, 422, "INVALID_CARD_COUNTER"),
        ({"card_no": CARD, "meter_serial": "00000000000001", "card_purchase_seq": 0, "meter_applied_seq": 0}, 409, "NOT_A_CARD_METER"),
        ({"card_no": CARD, "meter_serial": "00000000000077", "card_purchase_seq": 0, "meter_applied_seq": 0}, 404, "METER_NOT_FOUND"),
        ({"card_no": "x", "meter_serial": CARD_SERIAL, "card_purchase_seq": 0, "meter_applied_seq": 0}, 422, "VALIDATION_ERROR"),
        ({"card_no": CARD, "meter_serial": CARD_SERIAL, "card_purchase_seq": "1", "meter_applied_seq": 0}, 422, "VALIDATION_ERROR"),
    ],
)
def test_bad_card_reads_are_refused_with_a_code(env, body, status, code):
    _, client, device, *_ = env
    r = client.post("/v1/cards/reads", headers=device, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)


def test_only_devices_and_operators_touch_cards(env):
    _, client, _, _, auditor = env
    assert client.post("/v1/cards/reads", headers=auditor, json={}).status_code == 403
    assert client.post("/v1/cards/reads", json={}).status_code == 401


def test_the_iot_timeline_never_says_gas_before_the_meter_applied_it(env):
    rig, client, _, _, auditor = env
    paid = rig.pay(10_000)
    assert delivery(client, auditor, paid.payment_id)["status"] == "WAITING_FOR_METER"
    rig.meter.acks_to_lose = 1
    rig.wake()
    rig.settle()
    shown = delivery(client, auditor, paid.payment_id)
    assert shown["status"] == "SENT_TO_METER"
    assert not [s for s in shown["steps"] if s["key"] == "applied"][0]["done"]
    rig.advance(seconds=10)
    rig.settle()
    assert delivery(client, auditor, paid.payment_id)["status"] == "GAS_AVAILABLE"


def test_the_resident_page_needs_its_token_and_tells_the_truth_in_chinese_first(env):
    rig, client, _, _, auditor = env
    paid = rig.pay(10_000)
    url = delivery(client, auditor, paid.payment_id)["resident_url"]
    path = re.sub(r"^https?://[^/]+", "", url)
    page = client.get(path)
    assert page.status_code == 200
    assert 'data-status="WAITING_FOR_METER"' in page.text
    assert page.text.index("等待燃气表联网") < page.text.index("Waiting for your meter to wake")
    assert "可以用气" in page.text  # the step is listed ...
    assert "已到表" not in page.text and "is on your meter" not in page.text  # ... but not claimed
    assert client.get(f"/p/{paid.payment_id}?t=" + "0" * 32).status_code == 404
    assert client.get(f"/p/{paid.payment_id}").status_code == 404
    rig.wake()
    rig.settle()
    assert 'data-status="GAS_AVAILABLE"' in client.get(path).text


def test_a_meter_that_needs_the_button_says_so_after_the_credit(env):
    rig, client, _, _, auditor = env
    with rig.system.new_uow() as uow:
        link = uow.meters.get(rig.meter.serial)
        link.reopen_needs_button = True
        uow.meters.save(link)
        uow.commit()
    rig.meter.credit_litres = -3_400
    rig.meter.valve_open = False
    rig.wake()
    rig.settle()
    paid = rig.pay(10_000)
    rig.settle()
    shown = delivery(client, auditor, paid.payment_id)
    assert shown["status"] == "GAS_AVAILABLE"
    assert "3 s" in shown["next_step"]["en"] and "红色按钮" in shown["next_step"]["zh"]
    assert rig.meter.valve_open is False  # no remote reopen for this meter


def test_an_operator_adds_a_tariff_version_and_later_purchases_use_it(env):
    rig, client, _, operator, auditor = env
    r = client.post("/v1/tariffs", headers=operator, json={
        "customer_class": "residential", "effective_from": "2026-11-01",
        "tiers": [{"upto_m3": 390, "price_yuan_per_m3": "2.832"}, {"upto_m3": 600, "price_yuan_per_m3": "3.398"}, {"upto_m3": None, "price_yuan_per_m3": "4.248"}],
    })  # fmt: skip
    assert r.status_code == 201, r.text
    assert [t["price_yuan_per_m3"] for t in r.json()["tiers"]] == ["2.832", "3.398", "4.248"]
    paid = rig.pay(10_000)
    order = delivery(client, auditor, paid.payment_id)["order"]
    assert order["volume_litres"] == 35_310  # 10,000 fen / 0.2832 fen per litre
    assert order["tiers"] == [{"tier_no": 1, "litres": 35_310, "cost_fen": 10_000, "price_yuan_per_m3": "2.832"}]
    again = client.post("/v1/tariffs", headers=operator, json={"customer_class": "residential", "effective_from": "2026-11-01", "tiers": [{"upto_m3": None, "price_yuan_per_m3": "3"}]})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "TARIFF_EXISTS")
    tiers = [{"upto_m3": 400, "price_yuan_per_m3": "3"}, {"upto_m3": 300, "price_yuan_per_m3": "3"}, {"upto_m3": None, "price_yuan_per_m3": "3"}]
    falling = client.post("/v1/tariffs", headers=operator, json={"customer_class": "residential", "effective_from": "2026-12-01", "tiers": tiers})
    assert (falling.status_code, falling.json()["error"]["code"]) == (422, "INVALID_TARIFF")
    assert client.post("/v1/tariffs", headers=auditor, json={}).status_code == 403


def test_an_operator_reissues_an_expired_purchase_and_it_is_delivered(env):
    rig, client, _, operator, auditor = env
    paid = rig.pay(5_000)
    rig.advance(hours=49)
    rig.worker.watch()
    order = delivery(client, auditor, paid.payment_id)["order"]
    assert order["state"] == "expired"
    shown = delivery(client, auditor, paid.payment_id)
    assert shown["status"] == "WAITING_FOR_METER" and "sent again as soon as the meter reports" in shown["next_step"]["en"]
    alerts = client.get("/v1/alerts", headers=auditor).json()
    assert any(a["kind"] == "COMMAND_EXPIRED" and a["subject"] == f"command:{order['id']}" for a in alerts)
    cancel = client.post(f"/v1/commands/{order['id']}/cancel", headers=operator, json={"reason": "try"})
    assert (cancel.status_code, cancel.json()["error"]["code"]) == (409, "CREDIT_NOT_CANCELLABLE")
    reissued = client.post(f"/v1/commands/{order['id']}/reissue", headers=operator, json={"reason": "resident called"})
    assert reissued.status_code == 200 and reissued.json()["state"] == "pending"
    rig.wake()
    rig.settle()
    assert delivery(client, auditor, paid.payment_id)["status"] == "GAS_AVAILABLE"
    assert not [a for a in client.get("/v1/alerts", headers=auditor).json() if a["kind"] == "COMMAND_EXPIRED"]
    assert check_ledger(rig.system.new_uow()).ok


def test_a_meter_shows_its_delivery_state(env):
    rig, client, _, _, auditor = env
    rig.pay(5_000)
    meter = client.get(f"/v1/meters/{rig.meter.serial}", headers=auditor).json()
    assert (meter["purchase_seq_issued"], meter["applied_seq"], meter["link_state"]) == (1, 0, "unknown")
    assert [c["state"] for c in meter["open_commands"]] == ["pending"]
    assert client.get("/v1/meters/00000000000077", headers=auditor).status_code == 404
    assert client.get("/v1/commands", params={"state": "bogus"}, headers=auditor).json()["error"]["code"] == "INVALID_STATE"
