"""Structured logs (structlog) and Prometheus metrics, set up once per process."""

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram

payments_taken = Counter(
    "gasworks_payments_taken_total",
    "Payments taken from channels, by channel kind and outcome (booked, held, duplicate).",
    ["channel_kind", "outcome"],
)
intake_refusals = Counter(
    "gasworks_intake_refusals_total",
    "Channel messages refused (recorded in intake_rejections), by channel kind and code.",
    ["channel_kind", "code"],
)
intake_seconds = Histogram(
    "gasworks_intake_seconds",
    "Time to verify and take one channel payment message.",
    ["channel_kind"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

meter_frames_refused = Counter(
    "gasworks_meter_frames_refused_total",
    "Frames from meters refused (malformed, foreign, unknown meter), by code.",
    ["code"],
)
meter_commands_sent = Counter("gasworks_meter_commands_sent_total", "Frames published to meters, resends included.", ["kind"])
purchases_applied = Counter("gasworks_purchases_applied_total", "Credit orders the meter (or card) has applied.", ["route"])
deliveries_open = Gauge("gasworks_deliveries_open", "Meter commands not yet applied, by route and state (set by the watchdog).", ["route", "state"])
alerts_open = Gauge("gasworks_alerts_open", "Open alerts by kind (set by the watchdog).", ["kind"])
meters_by_link_state = Gauge("gasworks_iot_meters", "IoT meters by link state: online, offline, unknown.", ["state"])

mqtt_connected = Gauge("gasworks_mqtt_connected", "1 while this process's worker transport is connected to the broker.")
mqtt_connection_attempts = Counter("gasworks_mqtt_connection_attempts_total", "Connection attempts to the broker by outcome: connected, refused, failed.", ["outcome"])
mqtt_disconnects = Counter("gasworks_mqtt_disconnects_total", "Connections to the broker lost (not counting our own stop).")
mqtt_uplinks_received = Counter("gasworks_mqtt_uplinks_received_total", "Uplink frames this process's share of the broker handed it.")
mqtt_downlinks_in_flight = Gauge("gasworks_mqtt_downlinks_in_flight", "Downlinks handed to the broker and not yet acknowledged (the in-flight window).")
mqtt_inflight_window_full = Counter("gasworks_mqtt_inflight_window_full_total", "Publishes that found the in-flight window full and had to wait for a PUBACK.")
dispatch_batches = Counter("gasworks_dispatch_batches_total", "Dispatch passes that claimed meters with work (FOR UPDATE SKIP LOCKED).")
uplinks_waiting = Gauge("gasworks_uplinks_waiting", "Uplinks received but not yet handled by this worker (its queue).")
watchdog_runs = Counter("gasworks_watchdog_runs_total", "Watchdog passes (expiry, offline meters, late purchases, gauges).")
watchdog_last_run = Gauge("gasworks_watchdog_last_run_timestamp_seconds", "When the watchdog last finished a pass (Unix time).")


class _CurrentStderr:
    """Writes to whatever sys.stderr is now (test runners and daemons swap it), not at set-up."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


carrier_pushes = Counter(
    "gasworks_carrier_pushes_total",
    "Pushes from carrier platforms by outcome: TAKEN, DUPLICATE (a retry, nothing done again) or the refusal's code",
    ["platform", "outcome"],
)
