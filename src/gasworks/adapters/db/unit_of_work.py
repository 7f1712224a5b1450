"""One unit of work = one database transaction, with the repositories a use case needs."""

from types import TracebackType

from sqlalchemy import Connection, Engine

from gasworks.adapters.db import bulk as bulk_repos
from gasworks.adapters.db import delivery as delivery_repos
from gasworks.adapters.db import meter_keys as meter_key_repos
from gasworks.adapters.db import reconciliation as reconciliation_repos
from gasworks.adapters.db import repositories as repos
from gasworks.domain.clock import Clock
from gasworks.domain.delivery import DeliveryPolicy
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, PaymentCeiling


class SqlUnitOfWork:
    """Use as `with uow: ...; uow.commit()`. Leaving the block without commit rolls back."""

    def __init__(
        self, engine: Engine, clock: Clock, *, delivery: DeliveryPolicy | None = None, local_timezone: str = "Asia/Shanghai",
        payment_ceiling: PaymentCeiling | None = None, site_key: bytes | None = None,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.delivery = delivery or DeliveryPolicy()
        # Unwired (a bare unit of work in a tool), only the absolute bound applies; bootstrap wires the configured one.
        self.payment_ceiling = payment_ceiling or PaymentCeiling(PAYMENT_FEN_ABSOLUTE_MAX)
        self.local_timezone = local_timezone
        self.site_key = site_key  # None: the development default generated into the database
        self._connection: Connection | None = None

    def __enter__(self) -> "SqlUnitOfWork":
        if self._connection is not None:
            raise RuntimeError("unit of work is already open")
        self._connection = self.engine.connect()
        self._transaction = self._connection.begin()
        c = self._connection
        self.customers = repos.Customers(c)
        self.channels = repos.Channels(c)
        self.ledger = repos.Ledger(c)
        self.orders = repos.Orders(c)
        self.payments = repos.Payments(c)
        self.nonces = repos.Nonces(c)
        self.rejections = repos.Rejections(c)
        self.api_keys = repos.ApiKeys(c)
        self.audit = repos.AuditLog(c)
        self.meters = delivery_repos.Meters(c)
        self.meter_models = delivery_repos.MeterModels(c)
        self.tariffs = delivery_repos.Tariffs(c)
        self.meter_commands = delivery_repos.MeterCommands(c)
        self.kiosks = delivery_repos.Kiosks(c)
        self.alerts = delivery_repos.Alerts(c)
        self.site_secrets = delivery_repos.SiteSecrets(c)
        self.meter_keys = meter_key_repos.MeterKeys(c, site_key=self.site_key, now=self.clock.now)
        self.statements = reconciliation_repos.Statements(c)
        self.reconciliations = reconciliation_repos.Reconciliations(c)
        self.bulk_accounts = bulk_repos.BulkAccounts(c, self.meter_keys)  # services/bulk_accounts.py
        self.bulk_meter_reports = bulk_repos.BulkMeterReports(c, self.meter_keys)  # services/bulk_uplinks.py
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._connection is not None
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._connection.close()
            self._connection = None

    def commit(self) -> None:
        self._transaction.commit()

    def rollback(self) -> None:
        self._transaction.rollback()
