"""Wires settings, engine, clock and units of work together for every entrypoint."""

import functools
from dataclasses import dataclass

from sqlalchemy import Engine

from gasworks.adapters.db.engine import is_cut_off, make_engine
from gasworks.adapters.db.group_commit import GroupCommit
from gasworks.adapters.db.meter_keys import UnsealedKeys, parse_site_key
from gasworks.adapters.db.repositories import ChannelCache
from gasworks.adapters.db.unit_of_work import SqlUnitOfWork
from gasworks.config import Settings
from gasworks.domain.clock import Clock, SystemClock
from gasworks.domain.delivery import DeliveryPolicy
from gasworks.domain.money import PaymentCeiling
from gasworks.services.cut_retry import CutRetry
from gasworks.services.delivery import policy_from
from gasworks.services.timeline import resident_link_secret


@dataclass
class System:
    settings: Settings
    engine: Engine
    clock: Clock

    def migrate(self) -> None:
        """The schema to head, as `gasworks serve` does before it answers."""
        from gasworks.adapters.db.migrate import upgrade  # Alembic only when asked

        upgrade(self.engine)

    def new_uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(
            self.engine, self.clock, delivery=self.delivery, local_timezone=self.settings.local_timezone,
            payment_ceiling=self.payment_ceiling, site_key=self.site_key, channel_cache=self.channel_cache, key_cache=self.key_cache,
        )  # fmt: skip

    @functools.cached_property
    def cut_retry(self) -> CutRetry:
        s = self.settings
        return CutRetry(attempts=s.cut_retry_attempts, first_backoff_s=s.cut_retry_backoff_ms / 1000, is_cut_off=is_cut_off)

    @functools.cached_property
    def payment_ceiling(self) -> PaymentCeiling:
        s = self.settings
        return PaymentCeiling(s.payment_fen_max, s.payment_fen_max_by_channel, s.payment_fen_max_by_class)

    @property
    def delivery(self) -> DeliveryPolicy:
        return policy_from(self.settings)

    def new_booking_uow(self) -> SqlUnitOfWork:
        """A unit of work for booking one channel notification: in a commit group when
        GASWORKS_GROUP_COMMIT_MS > 0 on PostgreSQL (see adapters/db/group_commit.py), else its own."""
        uow = self.new_uow()
        uow.group_commit = self.group_commit
        return uow

    @functools.cached_property
    def group_commit(self) -> GroupCommit | None:
        s = self.settings
        if s.group_commit_ms <= 0 or self.engine.dialect.name != "postgresql":
            return None
        return GroupCommit(self.engine, window_s=s.group_commit_ms / 1000, members_max=s.group_commit_members_max)

    @functools.cached_property
    def channel_cache(self) -> ChannelCache:
        """Channels and keys read once per GASWORKS_CHANNEL_CACHE_TTL_S in this process (see ChannelCache)."""
        return ChannelCache(self.settings.channel_cache_ttl_s)

    @functools.cached_property
    def site_key(self) -> bytes | None:
        """GASWORKS_SITE_KEY, which seals meter keys at rest (None: the development default in the database)."""
        return parse_site_key(self.settings.site_key)

    @functools.cached_property
    def key_cache(self) -> UnsealedKeys:
        """Meter keys opened under the site key, kept (bounded) for this process's units of work."""
        return UnsealedKeys(self.settings.meter_keys_cached_max)

    @functools.cached_property
    def resident_link_secret(self) -> str:
        """Made once per installation and never changed, so read once per process."""
        return resident_link_secret(self.new_uow())


def bootstrap(settings: Settings | None = None, *, clock: Clock | None = None, engine: Engine | None = None) -> System:
    settings = settings or Settings()
    return System(settings=settings, engine=engine or make_engine(settings.database_url, connect_timeout_s=settings.database_connect_timeout_s), clock=clock or SystemClock())
