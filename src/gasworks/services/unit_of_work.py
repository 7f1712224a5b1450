"""The unit of work a use case runs in. The SQL one lives in adapters; services see this shape."""

from typing import Protocol

from gasworks.adapters.db import delivery as delivery_repos
from gasworks.adapters.db import meter_keys as meter_key_repos
from gasworks.adapters.db import reconciliation as reconciliation_repos
from gasworks.adapters.db import repositories as repos
from gasworks.domain.channels import Channel
from gasworks.domain.clock import Clock
from gasworks.domain.delivery import DeliveryPolicy
from gasworks.domain.money import PaymentCeiling


class UnitOfWork(Protocol):
    clock: Clock
    delivery: DeliveryPolicy
    payment_ceiling: PaymentCeiling  # every booking path is bounded by it, whoever calls
    local_timezone: str
    customers: repos.Customers
    channels: repos.Channels
    ledger: repos.Ledger
    orders: repos.Orders
    payments: repos.Payments
    nonces: repos.Nonces
    rejections: repos.Rejections
    api_keys: repos.ApiKeys
    audit: repos.AuditLog
    meters: delivery_repos.Meters
    meter_models: delivery_repos.MeterModels
    tariffs: delivery_repos.Tariffs
    meter_commands: delivery_repos.MeterCommands
    kiosks: delivery_repos.Kiosks
    alerts: delivery_repos.Alerts
    site_secrets: delivery_repos.SiteSecrets
    meter_keys: meter_key_repos.MeterKeys
    statements: reconciliation_repos.Statements
    reconciliations: reconciliation_repos.Reconciliations

    def __enter__(self) -> "UnitOfWork": ...
    def __exit__(self, *exc: object) -> None: ...
    def commit(self) -> None: ...
    def recent_channel(self, channel_id: str) -> Channel | None:
        """The channel and its keys as recently as the channel cache allows; opens no transaction on a hit."""
        ...
