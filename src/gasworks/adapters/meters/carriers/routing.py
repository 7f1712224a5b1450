"""A meter's transport is per meter: those registered on a carrier platform go through it, the rest as before.

The worker keeps one transport; this one wraps it. For each frame it looks the meter up among the
carrier registrations (in the dispatcher's unit of work, so the platform command it creates is
recorded in the same transaction as the send) and hands the frame to that platform's sender;
meters on no platform get the wrapped transport (MQTT or loopback). Uplinks from platforms arrive
by HTTP push (entrypoints/api/carrier_routes.py), not through this transport's queue.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gasworks.adapters.meters.carriers.ctwing import CtwingClient, CtwingCredentials, CtwingSender
from gasworks.adapters.meters.transport import TransportError, Uplinks
from gasworks.domain.carriers import CarrierPlatform

if TYPE_CHECKING:
    from gasworks.config import Settings
    from gasworks.services.unit_of_work import UnitOfWork


class Transport(Protocol):
    uplinks: Uplinks

    def publish(self, serial: str, payload: bytes) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class CarrierRoutedTransport:
    def __init__(self, inner: Transport, *, ctwing: CtwingSender, new_uow: Callable[[], "UnitOfWork"]) -> None:
        self.inner = inner
        self.uplinks = inner.uplinks
        self.senders = {CarrierPlatform.CTWING: ctwing}
        self._new_uow = new_uow

    @property
    def connected(self) -> bool:
        return getattr(self.inner, "connected", True)

    def publish_in(self, serial: str, payload: bytes, uow: "UnitOfWork") -> None:
        """Send within the dispatcher's open unit of work (see services/delivery.py: dispatch_meter)."""
        device = uow.carriers.device_of(serial)
        if device is None:
            self.inner.publish(serial, payload)
            return
        sender = self.senders.get(device.platform)
        if sender is None:
            raise TransportError(f"meter {serial} is on {device.platform}, which gasworks cannot send to yet")
        sender.send(device, payload, uow)

    def publish(self, serial: str, payload: bytes) -> None:
        with self._new_uow() as uow:
            self.publish_in(serial, payload, uow)
            uow.commit()

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()
        for sender in self.senders.values():
            sender.client.close()


def with_carriers(inner: Transport, settings: "Settings", new_uow: Callable[[], "UnitOfWork"]) -> Transport:
    """The worker's transport, routed through CTWing for meters registered there when CTWing is configured."""
    if not settings.ctwing_base_url:
        return inner
    client = CtwingClient(CtwingCredentials(settings.ctwing_base_url, settings.ctwing_app_key, settings.ctwing_app_secret, settings.ctwing_master_key))
    sender = CtwingSender(client, ttl_margin_s=settings.carrier_command_ttl_margin_s, operator=settings.ctwing_operator)
    return CarrierRoutedTransport(inner, ctwing=sender, new_uow=new_uow)
