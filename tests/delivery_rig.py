"""A test rig for meter delivery: the real worker, a transport, and a simulated meter on it."""

from dataclasses import dataclass, field
from datetime import timedelta

from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.bootstrap import System
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.delivery import MeterCommand
from gasworks.entrypoints.workers.worker import Transport, Worker
from gasworks.services import meter_keys
from gasworks.services.intake import Acceptance, accept_payment
from gasworks.sim.meter import SimulatedMeter
from tests.support import ACCOUNT_NO

IOT_SERIAL = "00000000000001"


@dataclass
class Rig:
    system: System
    transport: Transport
    meter: SimulatedMeter = field(default_factory=lambda: SimulatedMeter(IOT_SERIAL))
    worker: Worker | None = None
    _txn: int = 0

    def __post_init__(self) -> None:
        self.worker = Worker(self.system, self.transport)
        if self.meter.keyring is None:  # the meter holds the key gasworks made when it was registered
            self.meter.install_key(meter_keys.export_key(self.meter.serial, self.system.new_uow(), actor="test"))
        if isinstance(self.transport, LoopbackTransport):
            self.transport.attach(self.meter.serial, self.meter.on_downlink)

    def pay(self, amount_fen: int, account_no: str = ACCOUNT_NO) -> Acceptance:
        self._txn += 1
        notice = PaymentNotice("wo-wallet", f"T{self._txn}", amount_fen, None, account_no=account_no)
        return accept_payment(notice, self.system.new_uow())

    def wake(self) -> None:
        """The meter wakes and reports (its window opens); over loopback the frame goes straight in."""
        assert isinstance(self.transport, LoopbackTransport)
        self.transport.send_uplink(self.meter.serial, self.meter.report(self.system.clock.now()))

    def settle(self, passes_max: int = 50) -> None:
        """Let the worker run until it has nothing more to do right now."""
        for _ in range(passes_max):
            if self.worker.run_once() == 0:
                return
        raise AssertionError(f"worker still busy after {passes_max} passes")

    def advance(self, **delta: float) -> None:
        self.system.clock.advance(timedelta(**delta).total_seconds())

    def orders(self, payment_id: str) -> list[MeterCommand]:
        with self.system.new_uow() as uow:
            return uow.meter_commands.for_payment(payment_id)

    def commands(self) -> list[MeterCommand]:
        with self.system.new_uow() as uow:
            return list(reversed(uow.meter_commands.recent(limit=100, serial=self.meter.serial)))

    def alerts(self) -> set[str]:
        with self.system.new_uow() as uow:
            return {a.kind for a in uow.alerts.list(limit=100)}
