"""Settings from the environment (GASWORKS_*) or a TOML file (GASWORKS_CONFIG, default gasworks.toml)."""

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gasworks.domain.errors import InvalidInput
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX
from gasworks.domain.province import City, Province

CHANNEL_JOBS = ("orders", "refunds", "statements")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GASWORKS_", extra="ignore")

    database_url: str = "sqlite:///gasworks.db"
    # Meter transport: None runs the in-process loopback; mqtt://user:password@host:1883 a broker.
    mqtt_url: str | None = None
    mqtt_topic_prefix: str = "gasworks/meters"
    # Meters on a NATS cluster (scripts/nats-cluster): uplinks from a JetStream work queue, one worker
    # each, downlinks on NATS, e.g. "nats://127.0.0.1:4301,nats://127.0.0.1:4302". None: MQTT as above.
    uplink_queue_urls: str | None = None
    uplink_queue_replicas: int = Field(1, ge=1, le=5)  # 3 on a three-node cluster
    mqtt_client_id: str = ""  # empty: a random one per process; unique per worker (clean sessions)
    mqtt_shared_subscription: bool = True  # workers share uplinks ($share/gasworks/...): each goes to one
    mqtt_keepalive_s: int = 15  # a worker gone silent with its socket open leaves the share 1.5 x this after its last packet
    mqtt_reconnect_delay_s_min: float = 0.5  # backoff between attempts doubles from this ...
    mqtt_reconnect_delay_s_max: float = 30.0  # ... up to this, each with jitter (half to all of it)
    host: str = "127.0.0.1"
    port: int = 8000
    log_json: bool = False

    # Limits: every one named, configurable and enforced.
    notification_clock_skew_s: int = 300  # timestamps further than this from now are refused
    request_body_bytes_max: int = 64 * 1024
    # Channels and their keys are kept this long per process; a key added or retired through
    # another process is seen within it (0: read them for every notification).
    channel_cache_ttl_s: float = Field(5.0, ge=0, le=300)
    # Group commit (PostgreSQL): notifications arriving within this many ms share one transaction,
    # each in its own savepoint, answered after the shared COMMIT (0: off; see adapters/db/group_commit.py).
    group_commit_ms: float = Field(0.0, ge=0, le=50)
    group_commit_members_max: int = Field(32, ge=1, le=256)
    # A booking cut off by the database (failover, dropped connection) is run again this many times in
    # all, pausing from this many ms, doubling, before the caller gets 503 TRY_AGAIN_LATER (see services/cut_retry.py).
    cut_retry_attempts: int = Field(4, ge=1, le=10)
    cut_retry_backoff_ms: int = Field(250, ge=0, le=5000)
    # One payment ceiling for every channel: synchronous channels (wallet, kiosk, counter, orders)
    # refuse above it (422 AMOUNT_ABOVE_LIMIT); money a channel already took is held in suspense.
    payment_fen_max: int = Field(1_000_000, ge=1, le=PAYMENT_FEN_ABSOLUTE_MAX)  # ¥10,000
    payment_fen_max_by_channel: dict[str, int] = {}  # e.g. {"counter": 5000000}: overrides per channel id
    payment_fen_max_by_class: dict[str, int] = {}  # e.g. {"commercial": 5000000}: overrides per customer class
    orders_per_account_max: int = 10  # POST /v1/orders per account per window (429 RATE_LIMITED beyond)
    orders_per_account_window_s: int = 600
    page_size_max: int = 500
    statement_bytes_max: int = 512 * 1024 * 1024  # an uploaded statement file

    # Meter delivery (see domain/delivery.py DeliveryPolicy for what each bound does).
    local_timezone: str = "Asia/Shanghai"  # the tier year and the resident's page use local time
    meter_wake_window_s: int = 60
    meter_ack_wait_s: int = 8
    meter_ack_wait_s_max: int = 32
    meter_sends_per_wake_max: int = 3
    meter_command_ttl_s: int = 48 * 3600
    meter_open_commands_max: int = 20
    meter_offline_after_s: int = 25 * 3600
    meter_offline_margin_s: int = Field(3600, ge=0, le=7 * 86_400)  # a slower model: offline after its report interval and this
    iot_applied_within_s: int = 600
    meter_overdraft_litres: int = 3_344
    worker_poll_interval_s: float = 0.05  # seconds between looks for due work
    worker_batch_max: int = 200  # uplinks or meters handled per pass
    watchdog_interval_s: int = 30  # seconds between watchdog passes in each worker
    worker_metrics_host: str = "127.0.0.1"  # where `gasworks worker` serves /metrics
    worker_metrics_port: int = 9150  # 0: no metrics server; one port per worker on a host
    service_hotline: str = "12319"
    public_base_url: str = ""  # prefix for resident links, e.g. https://gas.example.cn
    # Meter frame security (adapters/meters/frame_security.py). The site key seals meter keys at rest:
    # 32 bytes as 64 hex digits or base64. Empty: one is generated into the database (development only).
    site_key: str = ""
    # Alipay's open API (adapters/channels/gateways/alipay.py): app_id, Alipay's public key and the base URL are the channel's.
    alipay_app_private_key_file: str = ""  # our application's private key (应用私钥), PEM, readable by gasworks only
    # Meters behind carrier platforms (README "Meters behind a carrier platform"). CTWing: empty base URL, no CTWing.
    ctwing_base_url: str = ""  # https://ag-api.ctwing.cn
    ctwing_app_key: str = ""
    ctwing_app_secret: str = ""
    ctwing_master_key: str = ""
    ctwing_push_secret: str = ""  # the secret in POST /v1/carriers/ctwing/{secret}/push; under 32 characters, every push is refused
    ctwing_operator: str = "gasworks"
    onenet_push_token: str = ""  # OneNET signs pushes with it; under 16 characters, every push is refused
    carrier_report_interval_s: int = 24 * 3600  # a registered meter's report interval unless given
    carrier_command_ttl_margin_s: int = 2 * 3600  # a cached command lives one report interval and this
    carrier_push_bytes_max: int = 8 * 1024
    # Calling the channels (services/outbound.py, README "Calling the channels").
    channel_jobs_interval_s: int = 30  # seconds between the worker's passes over orders, refunds and statements
    # Which of the calls to the channels this worker makes: any of orders, refunds, statements ("" for none).
    # `gasworks worker --processes N` gives them to the first process only; the others deliver.
    channel_jobs: str = "orders,refunds,statements"
    channel_call_timeout_s: float = 10.0  # one HTTP call to a channel
    order_query_after_s: int = 600  # an open order is first asked about this long after it was created
    channel_retry_s_first: int = 60  # a failed or unfinished call is tried again after this, doubling ...
    channel_retry_s_max: int = 3600  # ... up to this
    channel_tries_before_alert: int = 6  # the try that raises CHANNEL_CALL_FAILING
    statement_fetch_hour: int = Field(10, ge=0, le=23)  # Beijing time: fetch the previous day's statements from then
    statement_late_hour: int = Field(12, ge=0, le=23)  # not imported by then: STATEMENT_LATE
    meter_keys_cached_max: int = Field(10_000, ge=1, le=10_000_000)  # meter keys kept opened in each process (LRU)
    # The delivery worker at broker speed (entrypoints/workers/worker.py).
    mqtt_inflight_max: int = Field(100, ge=1, le=65_535)  # QoS 1 downlinks handed to the broker and not yet acknowledged, per worker
    worker_dispatch_batch_max: int = Field(50, ge=1, le=10_000)  # meters claimed (and locked) per dispatch transaction
    worker_uplink_threads: int = Field(4, ge=1, le=64)  # threads per worker taking uplinks (PostgreSQL; each waits mostly on the database)
    worker_processes: int = 1  # 1 to 63; `gasworks worker` runs this many processes, sharing uplinks through the broker
    # A PostgreSQL host that does not answer (a dead machine, a cut network) is given up on after this.
    database_connect_timeout_s: int = Field(5, ge=1, le=120)
    # A province (README "A province of cities"): GASWORKS_PROVINCE_FILE names its TOML (cities, their databases and channels).
    province_file: str = ""
    province_city_requests_max: int = Field(16, ge=1, le=1000)  # in flight per city: a stuck city cannot take every thread
    province_city_rest_s: float = Field(1.0, ge=0, le=60)  # after a city answers 503, the router answers its requests 503 itself this long (0: off)
    province_report_answer_within_s: float = Field(30.0, gt=0, le=600)  # a city's figures not back by then: reported unavailable

    @field_validator("channel_jobs")
    @classmethod
    def _known_channel_jobs(cls, jobs: str) -> str:
        unknown = {job.strip() for job in jobs.split(",") if job.strip()} - set(CHANNEL_JOBS)
        if unknown:
            raise ValueError(f"channel jobs are {', '.join(CHANNEL_JOBS)}, not {', '.join(sorted(unknown))}")
        return jobs

    def channel_jobs_on(self) -> frozenset[str]:
        return frozenset(job.strip() for job in self.channel_jobs.split(",") if job.strip())

    @field_validator("payment_fen_max_by_channel", "payment_fen_max_by_class")
    @classmethod
    def _ceilings_in_range(cls, ceilings: dict[str, int]) -> dict[str, int]:
        for name, fen_max in ceilings.items():
            if not 0 < fen_max <= PAYMENT_FEN_ABSOLUTE_MAX:
                raise ValueError(f"payment ceiling for {name} must be 1 to {PAYMENT_FEN_ABSOLUTE_MAX} fen")
        return ceilings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("GASWORKS_CONFIG", "gasworks.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


class CityConfig(BaseModel):
    """One city of a province: its code (the first four digits of its account numbers), its own
    database, the channels (merchant accounts) that are its, and its meters' topic prefix."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[0-9]{4}$")
    name: str = Field(min_length=1, max_length=50)
    database_url: str = Field(min_length=1)
    channels: list[str] = Field(default_factory=list, max_length=100)
    mqtt_topic_prefix: str = ""  # empty: gasworks/<code>/meters

    def topic_prefix(self) -> str:
        return self.mqtt_topic_prefix or f"gasworks/{self.code}/meters"


class ProvinceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cities: list[CityConfig] = Field(min_length=1)

    def province(self) -> Province:
        return Province(tuple(City(c.code, c.name, frozenset(c.channels)) for c in self.cities))

    def city(self, code: str) -> CityConfig:
        self.province().city(code)  # UNKNOWN_CITY unless listed
        return next(c for c in self.cities if c.code == code)

    def city_settings(self, base: Settings, code: str, index: int = 0) -> Settings:
        """The deployment's settings as city `code` runs them: its database, its meters' topics, its
        resident links under /cities/<code>, and (for its worker) a metrics port of its own."""
        city = self.city(code)
        return base.model_copy(
            update={
                "database_url": city.database_url,
                "mqtt_topic_prefix": city.topic_prefix(),
                "public_base_url": f"{base.public_base_url.rstrip('/')}/cities/{code}" if base.public_base_url else "",
                "worker_metrics_port": base.worker_metrics_port + index if base.worker_metrics_port else 0,
                "mqtt_client_id": f"{base.mqtt_client_id}-{code}" if base.mqtt_client_id else "",
            }
        )


def load_province(path: str | Path) -> ProvinceConfig:
    """The province file, checked whole: every city, database and channel, or a clear refusal."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"cannot read the province file {path}: {error.strerror}", code="INVALID_PROVINCE") from None
    try:
        config = ProvinceConfig.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"the province file {path} is not TOML: {error}", code="INVALID_PROVINCE") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:10])
        raise InvalidInput(f"the province file {path}: {problems}", code="INVALID_PROVINCE") from None
    config.province()  # codes and channels unique
    return config
