"""The unit of work a use case runs in: the repositories of services/ports.py in one transaction.

The SQL one lives in adapters/db; services see only this shape."""

from typing import Protocol

from gasworks.domain.channels import Channel
from gasworks.domain.clock import Clock
from gasworks.domain.delivery import DeliveryPolicy
from gasworks.domain.frames import UplinkFrame
from gasworks.domain.meter_messages import MeterMessage
from gasworks.domain.meter_security import MeterFrameSecurity, OpenedUplink
from gasworks.domain.money import PaymentCeiling
from gasworks.services import ports
from gasworks.services.carrier_ports import CarrierRegistry
from gasworks.services.outbound_store import OutboundStore
from gasworks.services.statement_matching import StatementMatcher


class KeyMaterialChecks(Protocol):
    """Whether key material an operator gives is what it claims (parsing it is the codec's craft)."""

    def public_key_pem(self, pem: str) -> None: ...  # ValueError unless an RSA public key

    def private_key_pem(self, pem: str) -> None: ...  # ValueError unless an unencrypted RSA private key


class MeterFrames(Protocol):
    """The meters' wire: open an uplink already read at the edge (MAC, key version, counter, and its
    message read by the meter model's profile, taken in a transaction of its own; raises
    MalformedFrame or FrameRefused) and seal a downlink in the caller's open unit of work (raises
    FrameNotSealed). The CJ/T 188 codec in adapters/meters is the one gasworks runs."""

    def open_uplink(self, frame: UplinkFrame, uow: "UnitOfWork", *, carrier_authenticated: bool = False) -> OpenedUplink: ...

    def seal_downlink(self, message: MeterMessage, uow: "UnitOfWork", *, reserved: MeterFrameSecurity | None = None) -> bytes: ...


class UnitOfWork(Protocol):
    clock: Clock
    key_checks: KeyMaterialChecks
    frames: MeterFrames
    delivery: DeliveryPolicy
    payment_ceiling: PaymentCeiling  # every booking path is bounded by it, whoever calls
    local_timezone: str
    customers: ports.CustomersRepository
    channels: ports.ChannelsRepository
    ledger: ports.LedgerRepository
    orders: ports.OrdersRepository
    payments: ports.PaymentsRepository
    nonces: ports.NoncesRepository
    rejections: ports.RejectionsRepository
    api_keys: ports.ApiKeysRepository
    audit: ports.AuditLogRepository
    meters: ports.MetersRepository
    meter_models: ports.MeterModelsRepository
    tariffs: ports.TariffsRepository
    meter_commands: ports.MeterCommandsRepository
    kiosks: ports.KiosksRepository
    alerts: ports.AlertsRepository
    site_secrets: ports.SiteSecretsRepository
    meter_keys: ports.MeterKeysRepository
    statements: ports.StatementsRepository
    reconciliations: ports.ReconciliationsRepository
    carriers: CarrierRegistry
    outbound: OutboundStore  # calling the channels: job state, gateway URLs
    statement_matcher: StatementMatcher  # reads and matches statement files (DuckDB); needs no open transaction

    def __enter__(self) -> "UnitOfWork": ...
    def __exit__(self, *exc: object) -> None: ...
    def commit(self) -> None: ...
    def recent_channel(self, channel_id: str) -> Channel | None:
        """The channel and its keys as recently as the channel cache allows; opens no transaction on a hit."""
        ...
