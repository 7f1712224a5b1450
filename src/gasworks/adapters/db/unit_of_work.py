"""One unit of work = one database transaction, with the repositories a use case needs."""

from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from gasworks.adapters.channels.rsa import RsaKeyChecks
from gasworks.adapters.db import alerts as alert_repos
from gasworks.adapters.db import bulk as bulk_repos
from gasworks.adapters.db import carriers as carrier_repos
from gasworks.adapters.db import delivery as delivery_repos
from gasworks.adapters.db import kiosks as kiosk_repos
from gasworks.adapters.db import meter_keys as meter_key_repos
from gasworks.adapters.db import outbound as outbound_repos
from gasworks.adapters.db import reconciliation as reconciliation_repos
from gasworks.adapters.db import repositories as repos
from gasworks.adapters.db import site_secrets as secret_repos
from gasworks.adapters.db import tariffs as tariff_repos
from gasworks.adapters.db.group_commit import CommitGroup, GroupCommit, GroupCommitFailed
from gasworks.adapters.meters.frame_security import FrameSecurityCodec
from gasworks.domain.channels import Channel
from gasworks.domain.clock import Clock
from gasworks.domain.delivery import DeliveryPolicy
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, PaymentCeiling

if TYPE_CHECKING:
    from gasworks.services.statement_matching import StatementMatcher
    from gasworks.services.unit_of_work import KeyMaterialChecks, MeterFrames


class SqlUnitOfWork:
    """Use as `with uow: ...; uow.commit()`. Leaving the block without commit rolls back."""

    def __init__(
        self, engine: Engine, clock: Clock, *, delivery: DeliveryPolicy | None = None, local_timezone: str = "Asia/Shanghai",
        payment_ceiling: PaymentCeiling | None = None, site_key: bytes | None = None, key_cache: meter_key_repos.UnsealedKeys | None = None,
        channel_cache: repos.ChannelCache | None = None, group_commit: GroupCommit | None = None,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.delivery = delivery or DeliveryPolicy()
        # Unwired (a bare unit of work in a tool), only the absolute bound applies; bootstrap wires the configured one.
        self.payment_ceiling = payment_ceiling or PaymentCeiling(PAYMENT_FEN_ABSOLUTE_MAX)
        self.local_timezone = local_timezone
        self.key_checks: KeyMaterialChecks = RsaKeyChecks()
        self.frames: MeterFrames = FrameSecurityCodec()
        self.site_key = site_key  # None: the development default generated into the database
        self.channel_cache = channel_cache  # shared by the units of work of one System
        self.group_commit = group_commit  # None: a transaction of its own (see group_commit.py)
        self._group: CommitGroup | None = None
        self.key_cache = key_cache  # the process's opened meter keys (bootstrap's System holds one); None: this unit's own
        self._connection: Connection | None = None

    @property
    def statement_matcher(self) -> "StatementMatcher":
        """DuckDB, imported only by the use cases that read or match statements."""
        from gasworks.adapters.statements.matcher import DuckDbStatementMatcher

        return DuckDbStatementMatcher()

    def __enter__(self) -> "SqlUnitOfWork":
        if self._connection is not None:
            raise RuntimeError("unit of work is already open")
        if self.group_commit is not None:
            self._group = self.group_commit.join()
            self._group.turn.acquire()
            self._connection = self._group.connection
            self._transaction = self._connection.begin_nested()  # this member's SAVEPOINT
        else:
            self._connection = self.engine.connect()
            self._transaction = self._connection.begin()
        c = self._connection
        self.customers = repos.Customers(c)
        self.ledger = repos.Ledger(c)
        self.orders = repos.Orders(c)
        self.payments = repos.Payments(c)
        self.nonces = repos.Nonces(c)
        self.rejections = repos.Rejections(c)
        self.api_keys = repos.ApiKeys(c)
        self.audit = repos.AuditLog(c)
        self.meters = delivery_repos.Meters(c)
        self.meter_models = delivery_repos.MeterModels(c)
        self.tariffs = tariff_repos.Tariffs(c)
        self.meter_commands = delivery_repos.MeterCommands(c)
        self.kiosks = kiosk_repos.Kiosks(c)
        self.alerts = alert_repos.Alerts(c)
        self.site_secrets = secret_repos.SiteSecrets(c)
        self.meter_keys = meter_key_repos.MeterKeys(c, site_key=self.site_key, now=self.clock.now, cache=self.key_cache)
        self.channels = repos.Channels(c, self.channel_cache, sealer=self.meter_keys)  # channels' secrets sealed under the same site key
        self.statements = reconciliation_repos.Statements(c)
        self.reconciliations = reconciliation_repos.Reconciliations(c)
        self.carriers = carrier_repos.Carriers(c)
        self.outbound = outbound_repos.Outbound(c)
        self.bulk_accounts = bulk_repos.BulkAccounts(c, self.meter_keys)  # services/bulk_accounts.py
        self.bulk_meter_reports = bulk_repos.BulkMeterReports(c, self.meter_keys)  # services/bulk_uplinks.py
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._group is None and self._connection is None and self.group_commit is not None:
            return  # a grouped member that committed: the connection went back with its group
        assert self._connection is not None
        if self._group is not None:  # left without commit(): only this member's savepoint goes
            try:
                if self._transaction.is_active:
                    self._transaction.rollback()
            finally:
                self._leave_group()
            return
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._connection.close()
            self._connection = None

    def commit(self) -> None:
        self._transaction.commit()
        if self._group is not None:  # the savepoint is released; now the group's one COMMIT
            error = self._leave_group()
            if error is not None:
                raise GroupCommitFailed(f"the shared commit failed, nothing of this unit of work was written: {error}") from error
        for channel_id in self.channels.changed:  # a reader may have cached the old keys meanwhile
            self.channels.cache.forget(channel_id)

    def recent_channel(self, channel_id: str) -> Channel | None:
        if self.channel_cache is not None and (channel := self.channel_cache.get(channel_id)) is not None:
            return channel  # no connection, no transaction: on SQLite not even the write lock
        with self:
            return self.channels.get_recent(channel_id)

    def _leave_group(self) -> BaseException | None:
        group, self._group, self._connection = self._group, None, None
        assert group is not None
        group.turn.release()
        return group.leave()

    def rollback(self) -> None:
        self._transaction.rollback()
