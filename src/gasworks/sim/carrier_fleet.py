"""A share of the city's IoT meters behind the local CTWing stub (`gasworks demo --ctwing-share 0.2`).

Those meters are registered on the platform (a device id each, a daily report interval), so the
worker's transport sends their commands through the stub's signed API with the TTL their report
interval asks for; their reports and answers come back as pushes to gasworks' push endpoint. Half
of their modules fall asleep right after reporting, before gasworks' command can arrive, as NB-IoT
modules do: those purchases wait in the platform's cache until the next day's report.
"""

import random
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from gasworks.adapters.meters.carriers.ctwing import CtwingClient, CtwingCredentials, CtwingSender
from gasworks.adapters.meters.carriers.routing import CarrierRoutedTransport
from gasworks.bootstrap import System
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform
from gasworks.entrypoints.api.app import create_app
from gasworks.services import carriers
from gasworks.sim.stubs.ctwing import CtwingStub

if TYPE_CHECKING:
    from gasworks.sim.city import Household

PRODUCT_ID = "15000001"
REPORT_INTERVAL_S = 24 * 3600
MODULE_SLEEPS_AT_ONCE = 0.5  # share of wakes where the module sleeps before gasworks' command arrives
SETTLE_ROUNDS_MAX = 20


class CtwingFleet:
    def __init__(self, system: System, households: list["Household"], *, rng: random.Random) -> None:
        secret = system.settings.ctwing_push_secret
        if len(secret) < 32:
            raise ValueError("routing meters through CTWing needs ctwing_push_secret (32+ characters) in the settings")
        self.system, self.rng = system, rng
        app_key, app_secret, master_key = "SimApp" + secrets.token_hex(4), secrets.token_urlsafe(24), secrets.token_hex(16)
        pusher = TestClient(create_app(system))  # its own client: pushes come from the stub's thread
        path = f"/v1/carriers/ctwing/{secret}/push"
        self.stub = CtwingStub(
            app_key=app_key, app_secret=app_secret, master_key=master_key, now=system.clock.now, clock_offset_ms=rng.randrange(-90_000, 90_000),
            post=lambda body: pusher.post(path, content=body, headers={"content-type": "application/json"}).status_code,
        )  # fmt: skip
        self.stub.start()
        self.sender = CtwingSender(CtwingClient(CtwingCredentials(self.stub.base_url, app_key, app_secret, master_key)), ttl_margin_s=system.settings.carrier_command_ttl_margin_s)
        self.device_of: dict[str, str] = {}
        for h in households:
            device_id = secrets.token_hex(16)
            carriers.register_device(
                CarrierDevice(h.serial, CarrierPlatform.CTWING, device_id, PRODUCT_ID, f"86{int(h.serial):013d}"[:15], REPORT_INTERVAL_S, system.clock.now()),
                system.new_uow(), actor="simulator", ttl_margin_s=system.settings.carrier_command_ttl_margin_s,
            )  # fmt: skip
            self.stub.add_device(device_id, PRODUCT_ID, f"86{int(h.serial):013d}"[:15], h.meter)
            self.device_of[h.serial] = device_id

    def route(self, transport):  # noqa: ANN001, ANN201 - the simulator's transport, wrapped
        return CarrierRoutedTransport(transport, ctwing=self.sender, new_uow=self.system.new_uow)

    def has(self, serial: str) -> bool:
        return serial in self.device_of

    def wake(self, serial: str, settle: Callable[[], None]) -> None:
        """The meter reports through the platform; gasworks answers; the module listens a while or not at all."""
        device_id = self.device_of[serial]
        listens = self.rng.random() >= MODULE_SLEEPS_AT_ONCE
        self.stub.wake(device_id, listen=listens)
        for _ in range(SETTLE_ROUNDS_MAX):  # pushes in, commands out, the meter's answers in ...
            self.stub.drain()
            sent = len(self.stub.calls)
            settle()
            self.stub.drain()
            if len(self.stub.calls) == sent:
                break
        if listens:
            self.stub.sleep(device_id)
            self.stub.drain()

    @property
    def cached_commands(self) -> int:
        return sum(len(self.stub.cached(d)) for d in self.device_of.values())

    def close(self) -> None:
        self.stub.stop()
        self.sender.client.close()
