"""The resident's page speaks local time, and names each kiosk's opening hours and a map beside its distance."""

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from gasworks.adapters.db import tables as t
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.domain.delivery import LinkState
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from gasworks.services.timeline import payment_timeline
from tests.conftest import START
from tests.delivery_rig import Rig
from tests.support import OTHER_ACCOUNT_NO, api_key, set_up

HOME = (26.8930, 112.5720)


@pytest.fixture
def env(system):
    set_up(system)
    client = TestClient(create_app(system))
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    auditor = {"Authorization": f"Bearer {api_key(system, Role.AUDITOR)}"}
    kiosks = (("k-near", 26.8935, 112.5725, "07:00-22:00"), ("k-mid", 26.9000, 112.5800, "24h"), ("k-unknown-hours", 26.9100, 112.5900, ""))
    for kiosk_id, lat, lon, hours in kiosks:
        body = {"id": kiosk_id, "name": f"自助机 {kiosk_id}", "channel_id": "kiosk", "community": "华新苑", "latitude": lat, "longitude": lon, "opening_hours": hours}
        assert client.post("/v1/kiosks", headers=operator, json=body).status_code == 201
    return Rig(system, LoopbackTransport()), client, operator, auditor


def page_of(client, auditor, payment_id):
    url = client.get(f"/v1/payments/{payment_id}", headers=auditor).json()["delivery"]["resident_url"]
    return client.get(re.sub(r"^https?://[^/]+", "", url)).text


def test_every_time_on_the_resident_page_is_local_time(env):
    rig, client, _, auditor = env
    paid = rig.pay(10_000)  # at START, 09:00 UTC: 17:00 in Hunan
    with rig.system.new_uow() as uow:  # the meter last reported at 09:00 UTC and has been silent since
        link = uow.meters.get(rig.meter.serial, lock=True)
        link.last_report_at, link.link_state = START, LinkState.OFFLINE
        uow.meters.save(link)
        uow.commit()
    page = page_of(client, auditor, paid.payment_id)
    assert "not been in touch since 2026-11-23 17:00." in page and "自 2026-11-23 17:00 未联网" in page
    assert "UTC" not in page and "09:00" not in page
    assert "<div class='time'>2026-11-23 17:00</div>" in page  # the paid step
    assert 'data-timezone="Asia/Shanghai"' in page


def test_a_card_resident_is_told_each_kiosks_hours_and_map_beside_its_distance(env):
    rig, client, _, auditor = env
    _move_home(rig)
    paid = rig.pay(10_000, OTHER_ACCOUNT_NO)
    timeline = payment_timeline(paid.payment_id, rig.system.new_uow(), hotline="95158")
    assert [n.kiosk.id for n in timeline.kiosks] == ["k-near", "k-mid", "k-unknown-hours"]
    assert "约 74 米，营业 07:00-22:00" in timeline.next_step.zh and "about 74 m, open 07:00-22:00" in timeline.next_step.en
    page = page_of(client, auditor, paid.payment_id)
    assert "营业时间 Open 07:00-22:00" in page and "营业时间 Open 24h" in page
    assert "https://www.openstreetmap.org/?mlat=26.893500&amp;mlon=112.572500#map=18/26.893500/112.572500" in page
    assert "geo:26.893500,112.572500" in page
    assert "data-distance-m='74'" in page
    shown = client.get(f"/v1/payments/{paid.payment_id}", headers=auditor).json()["delivery"]["nearest_kiosks"][0]
    assert shown["opening_hours"] == "07:00-22:00" and shown["distance_m"] == 74 and shown["map_url"].startswith("https://www.openstreetmap.org/?mlat=26.893500")


def _move_home(rig):
    with rig.system.engine.begin() as c:
        c.execute(update(t.customers).where(t.customers.c.account_no == OTHER_ACCOUNT_NO).values(latitude=HOME[0], longitude=HOME[1]))


@pytest.mark.parametrize("hours", ["7-22", "25:00-26:00", "07:00-22:00 and weekends", "x" * 41])
def test_opening_hours_are_refused_unless_people_can_read_them(env, hours):
    _, client, operator, _ = env
    body = {"id": "k-odd", "name": "odd", "channel_id": "kiosk", "community": "c", "latitude": 26.9, "longitude": 112.5, "opening_hours": hours}
    refused = client.post("/v1/kiosks", headers=operator, json=body)
    assert refused.status_code == 422
