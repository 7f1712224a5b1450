"""The resident's page in a real browser (Debian's Chromium, headless) on a phone-sized screen."""

import re
import shutil

import pytest
from fastapi.testclient import TestClient

from gasworks.adapters.db.migrate import upgrade
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from tests.conftest import make_system, service_missing
from tests.delivery_rig import Rig
from tests.support import api_key, served_in_thread, set_up

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 360, "height": 740}


@pytest.fixture
def browser():
    if shutil.which(CHROMIUM) is None:
        service_missing(f"no browser at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture
def served(tmp_path, clock):
    system = make_system(f"sqlite:///{tmp_path / 'g.db'}", clock)  # the embedded default
    upgrade(system.engine)
    set_up(system)
    with served_in_thread(create_app(system)) as base_url:
        yield system, base_url


def test_a_resident_follows_a_payment_to_gas_on_a_phone(served, browser):
    system, base = served
    rig = Rig(system, LoopbackTransport())
    paid = rig.pay(10_000)
    auditor = {"Authorization": f"Bearer {api_key(system, Role.AUDITOR)}"}
    url = TestClient(create_app(system)).get(f"/v1/payments/{paid.payment_id}", headers=auditor).json()["delivery"]["resident_url"]
    page = browser.new_page(viewport=PHONE)
    page.goto(base + re.sub(r"^https?://[^/]+", "", url))
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    headline = page.locator("[data-status] h1")
    assert headline.inner_text() == "等待燃气表联网"
    assert page.get_by_text("Waiting for your meter to wake").is_visible()
    assert page.get_by_text("按表上的通讯按钮", exact=False).is_visible()
    assert page.locator("li.done .time").first.inner_text() == "2026-11-23 17:00"  # paid at 09:00 UTC: 17:00 in Hunan
    assert page.get_by_text("Times are local (Asia/Shanghai)", exact=False).is_visible()
    assert "UTC" not in page.locator("main").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing to scroll sideways
    rig.wake()
    rig.settle()
    page.reload()
    assert page.locator("[data-status]").get_attribute("data-status") == "GAS_AVAILABLE"
    assert "可以用气" in page.locator("[data-status] h1").inner_text()
    assert page.locator("li.done").count() == 4
    page.goto(f"{base}/p/{paid.payment_id}?t=forged")
    assert "NOT_FOUND" in page.content()
