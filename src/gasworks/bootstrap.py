"""Wires settings, engine, clock and units of work together for every entrypoint."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
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
from gasworks.services.unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from gasworks.adapters.meters.carriers.routing import Transport
    from gasworks.services.channel_gateway import ChannelGateway

log = structlog.get_logger(__name__)


@dataclass
class System:
    settings: Settings
    engine: Engine
    clock: Clock

    def migrate(self) -> None:
        """The schema to head, and any channel secret stored before secrets were sealed sealed under the
        site key, as `gasworks serve` and `gasworks db upgrade` do before anything else."""
        from gasworks.adapters.db.migrate import upgrade  # Alembic only when asked
        from gasworks.services.channels import seal_stored_keys

        upgrade(self.engine)
        sealed = seal_stored_keys(self.new_uow(), actor="migrate")
        if sealed:
            log.warning("channel_keys_sealed", keys=sealed, why="stored in the clear before gasworks sealed channel secrets")

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

    def meter_transport(self) -> "Transport":
        """How this process reaches the meters: a JetStream work queue on a NATS cluster
        (GASWORKS_UPLINK_QUEUE_URLS), an MQTT broker (GASWORKS_MQTT_URL) or, with neither, the
        in-process loopback; meters registered on CTWing go through it when CTWing is configured."""
        from gasworks.adapters.meters.carriers.routing import with_carriers
        from gasworks.adapters.meters.transport import Backoff, LoopbackTransport, MqttTransport

        s = self.settings
        inner: Transport
        if s.uplink_queue_urls:
            from gasworks.adapters.meters.jetstream import JetStreamTransport  # nats-py only when meters are on NATS

            servers = [url.strip() for url in s.uplink_queue_urls.split(",") if url.strip()]
            inner = JetStreamTransport(servers, prefix=s.mqtt_topic_prefix, replicas=s.uplink_queue_replicas)
        elif s.mqtt_url:
            inner = MqttTransport(
                s.mqtt_url, prefix=s.mqtt_topic_prefix, client_id=s.mqtt_client_id, shared=s.mqtt_shared_subscription, keepalive_s=s.mqtt_keepalive_s,
                backoff=Backoff(s.mqtt_reconnect_delay_s_min, s.mqtt_reconnect_delay_s_max), inflight_max=s.mqtt_inflight_max,
            )  # fmt: skip
        else:
            inner = LoopbackTransport()
        return with_carriers(inner, s, self.new_uow)

    def channel_gateway(self, channel_id: str) -> "ChannelGateway | None":
        """The channel's gateway, built from the database each time (see `build_channel_gateway`)."""
        return build_channel_gateway(channel_id, self.new_uow, self.settings, self.clock)

    @functools.cached_property
    def resident_link_secret(self) -> str:
        """Made once per installation and never changed, so read once per process."""
        return resident_link_secret(self.new_uow())


def build_channel_gateway(channel_id: str, new_uow: Callable[[], UnitOfWork], settings: Settings, clock: Clock) -> "ChannelGateway | None":
    """The channel's gateway (adapters/channels/gateways), or None (logged) when it has no base URL or lacks a key.
    Built from the database each time: a key rollover or a new base URL needs no restart."""
    from gasworks.adapters.channels.gateways import GatewayNotConfigured, gateway_for

    with new_uow() as uow:
        channel = uow.channels.get(channel_id)
        base_url = uow.outbound.gateway_url(channel_id)
    if channel is None or base_url is None:
        return None
    s = settings
    notify_url = f"{s.public_base_url.rstrip('/')}/v1/channels/{channel_id}/notify" if s.public_base_url else None
    try:
        return gateway_for(
            channel, base_url, now=clock.now, skew_s=s.notification_clock_skew_s, timeout_s=s.channel_call_timeout_s,
            notify_url=notify_url, alipay_app_private_key_file=s.alipay_app_private_key_file,
        )  # fmt: skip
    except GatewayNotConfigured as missing:
        log.warning("channel_gateway_not_configured", channel_id=channel_id, reason=str(missing))
        return None


def bootstrap(settings: Settings | None = None, *, clock: Clock | None = None, engine: Engine | None = None) -> System:
    settings = settings or Settings()
    return System(settings=settings, engine=engine or make_engine(settings.database_url, connect_timeout_s=settings.database_connect_timeout_s), clock=clock or SystemClock())
