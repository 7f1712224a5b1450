"""The worker's calls to the channels: order recovery, refunds, statements (services/outbound.py).

Runs in its own thread beside the meter loop, so a slow channel never delays a meter's command.
Gateways are built per pass from the database by the System (a key rollover or a new base URL needs no restart).
"""

import threading

import structlog
from prometheus_client import Counter, Gauge

from gasworks.bootstrap import System
from gasworks.domain.outbound import Backoff
from gasworks.services.channel_gateway import ChannelGateway
from gasworks.services.outbound import OutboundPolicy, PassReport, advance_refunds, fetch_due_statements, recover_orders

log = structlog.get_logger(__name__)

channel_job_outcomes = Counter("gasworks_channel_job_outcomes_total", "What the worker's calls to the channels achieved, by outcome (booked, closed, refunds_confirmed, failures ...).", ["outcome"])
channel_jobs_last_run = Gauge("gasworks_channel_jobs_last_run_timestamp_seconds", "When the worker last finished a pass over orders, refunds and statements (Unix time).")


def policy_of(system: System) -> OutboundPolicy:
    s = system.settings
    backoff = Backoff(first_s=s.channel_retry_s_first, cap_s=s.channel_retry_s_max, tries_before_alert=s.channel_tries_before_alert)
    return OutboundPolicy(
        query_after_s=s.order_query_after_s, order_backoff=backoff, refund_backoff=backoff,
        statement_backoff=Backoff(first_s=min(300, s.channel_retry_s_max), cap_s=s.channel_retry_s_max, tries_before_alert=s.channel_tries_before_alert),
        statement_hour=s.statement_fetch_hour, statement_late_hour=s.statement_late_hour, batch_max=s.worker_batch_max, timezone=s.local_timezone,
    )  # fmt: skip


class ChannelJobs:
    def __init__(self, system: System) -> None:
        self.system = system

    def run_once(self) -> PassReport:
        gateways: dict[str, ChannelGateway | None] = {}

        def gateway(channel_id: str) -> ChannelGateway | None:
            if channel_id not in gateways:
                gateways[channel_id] = self.system.channel_gateway(channel_id)
            return gateways[channel_id]

        policy, new_uow = policy_of(self.system), self.system.new_uow
        report = PassReport()
        jobs = self.system.settings.channel_jobs_on()
        try:
            if "orders" in jobs:
                recover_orders(new_uow, gateway, policy, report)
            if "refunds" in jobs:
                advance_refunds(new_uow, gateway, policy, report)
            if "statements" in jobs:
                fetch_due_statements(new_uow, gateway, policy, report)
        finally:
            for built in gateways.values():
                close = getattr(built, "close", None)
                if close is not None:
                    close()
        for outcome, count in report.__dict__.items():
            if isinstance(count, int) and count:
                channel_job_outcomes.labels(outcome).inc(count)
        channel_jobs_last_run.set_to_current_time()
        if report.booked or report.closed or report.refunds_confirmed or report.statements_imported or report.alerts:
            log.info("channel_jobs_pass", **{k: v for k, v in report.__dict__.items() if v})
        return report

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - one bad pass must not end the calls; logged with its traceback
                log.exception("channel_jobs_pass_failed")
            stop.wait(self.system.settings.channel_jobs_interval_s)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="gasworks-channel-jobs", daemon=True)
        thread.start()
        return thread
