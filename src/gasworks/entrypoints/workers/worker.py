"""`gasworks worker`: hears meters, sends them what they need, and watches every delivery.

Safe to run several at once on PostgreSQL (each meter is locked with FOR UPDATE SKIP LOCKED while a
worker deals with it; `gasworks worker --processes N` starts N); on SQLite run one. Work it does:
1. every uplink waiting in the transport's queue (up to `worker_batch_max` a pass): read its frame
   here (`take_uplink`: services take an UplinkFrame, never bytes), handle it, then send that
   meter its next command while it listens;
2. meters still awake with a command due (a new purchase, or a resend after the ack wait), claimed
   in batches of up to `worker_dispatch_batch_max` (FOR UPDATE SKIP LOCKED: workers take disjoint batches);
   on PostgreSQL a booking's NOTIFY wakes a dispatcher thread for this at once, so a payment's
   frame does not queue behind acknowledgements; elsewhere it polls;
3. every `watchdog_interval_s`: expiry, offline meters, late purchases, gauges, and forgetting
   channel nonces too old to matter.
Frames go out through the transport's bounded in-flight window (`mqtt_inflight_max`): no publish
waits for its PUBACK while it holds a meter's lock.
"""

import threading
import time
from typing import Protocol

import psycopg
import structlog

from gasworks.adapters.db.delivery import METER_WORK_CHANNEL
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.frame_security import require_schemes_in_use
from gasworks.adapters.meters.transport import TransportError, Uplinks
from gasworks.bootstrap import System
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.meter_security import DEFAULT_METER_MODEL
from gasworks.entrypoints.workers.channel_jobs import ChannelJobs
from gasworks.observability import uplinks_waiting, watchdog_last_run, watchdog_runs
from gasworks.services.carriers import forget_old_pushes
from gasworks.services.delivery import UplinkOutcome, dispatch_due, dispatch_meter, handle_uplink, refuse_unreadable_frame, watch_deliveries
from gasworks.services.intake import forget_old_nonces
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)


def take_uplink(topic_serial: str, payload: bytes, uow: UnitOfWork) -> UplinkOutcome:
    """One frame off a meter's topic, read here at the edge (`cjt188.read_uplink`: structure and
    checksum) and handed on as an UplinkFrame; one that cannot be read is refused and recorded."""
    try:
        frame = cjt188.read_uplink(payload)
    except MalformedFrame as error:
        return refuse_unreadable_frame(topic_serial, error.code, error.message, payload, uow)
    return handle_uplink(topic_serial, frame, uow)


class Transport(Protocol):
    uplinks: Uplinks

    def publish(self, serial: str, payload: bytes) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Worker:
    def __init__(self, system: System, transport: Transport) -> None:
        self.system = system
        self.transport = transport
        # Refuse to start if a MAC scheme some meter model needs cannot be computed here (never fall back).
        require_schemes_in_use(system.new_uow(), also_models=[DEFAULT_METER_MODEL])
        self._last_watch = float("-inf")
        self._work_announced = threading.Event()  # set by a booking's NOTIFY (PostgreSQL) or at stop

    def run_once(self, *, wait_s: float = 0.0, due_meters: bool = True) -> int:
        """One pass; returns how many things it did. Waits up to `wait_s` for a first uplink.
        `due_meters=False` handles uplinks only (each meter that speaks is still served at once)."""
        done = self.handle_uplinks(wait_s=wait_s)
        if due_meters:
            done += self.dispatch_due()
        if time.monotonic() - self._last_watch >= self.system.settings.watchdog_interval_s:
            self.watch()
        return done

    def handle_uplinks(self, *, wait_s: float = 0.0) -> int:
        """Uplinks waiting in the transport's queue, up to `worker_batch_max`; each meter that spoke
        is sent its next command at once. Safe on several threads (each meter is locked while handled)."""
        done = 0
        batch_max = self.system.settings.worker_batch_max
        item = self.transport.uplinks.get(wait_s)
        while item is not None and done < batch_max:
            serial, payload = item
            if not serial:  # a nudge: new work somewhere, looked for below
                item = self.transport.uplinks.get(0)
                continue
            outcome = take_uplink(serial, payload, self.system.new_uow())
            done += 1
            if outcome.commands_waiting:
                done += self._dispatch(serial)
            item = self.transport.uplinks.get(0) if done < batch_max else None
        if item is not None:  # the batch bound was hit: put it back for the next pass
            self.transport.uplinks.put(*item)
        uplinks_waiting.set(self.transport.uplinks.pending())
        return done

    def watch(self) -> None:
        report = watch_deliveries(self.system.new_uow, batch_max=self.system.settings.worker_batch_max)
        forget_old_nonces(self.system.new_uow(), skew_s=self.system.settings.notification_clock_skew_s)
        forget_old_pushes(self.system.new_uow())  # carrier platforms' push keys past any retry
        self._last_watch = time.monotonic()
        watchdog_runs.inc()
        watchdog_last_run.set_to_current_time()
        if report.expired or report.offline or report.overdue:
            log.warning("deliveries_need_attention", expired=report.expired, offline=report.offline, overdue=report.overdue)

    def dispatch_due(self) -> int:
        """Batches of meters with a command due, until a batch comes back short; returns the commands sent."""
        sent = 0
        batch_max = self.system.settings.worker_dispatch_batch_max  # the meters stay locked until the batch commits: keep it short
        while getattr(self.transport, "connected", True):  # no broker: nothing can be sent, nor tried
            try:
                batch = dispatch_due(self.system.new_uow(), self.transport, batch_max=batch_max)
            except TransportError as error:
                log.warning("meter_send_failed", reason=str(error))
                break
            sent += len(batch)
            if len(batch) < batch_max:
                break
        return sent

    def _dispatch(self, serial: str) -> int:
        try:
            return 1 if dispatch_meter(serial, self.system.new_uow(), self.transport) is not None else 0
        except TransportError as error:
            log.warning("meter_send_failed", meter=serial, reason=str(error))
            return 0

    def listen_for_work(self, stop: threading.Event) -> None:
        """On PostgreSQL: a booking's NOTIFY wakes this worker at once instead of at its next poll."""
        url = self.system.engine.url
        if url.get_backend_name() != "postgresql":
            return
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

        def listen() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(dsn, autocommit=True) as connection:
                        connection.execute(f"LISTEN {METER_WORK_CHANNEL}")
                        while not stop.is_set():
                            for _ in connection.notifies(timeout=1.0, stop_after=1):
                                self._work_announced.set()
                except psycopg.Error as error:  # the database restarts: polling still covers, listen again
                    log.warning("listen_failed", reason=str(error))
                    stop.wait(2.0)

        threading.Thread(target=listen, name="gasworks-listen", daemon=True).start()

    def dispatch_until(self, stop: threading.Event) -> None:
        """The dispatcher thread: due meters at once on a booking's NOTIFY, else every poll interval."""
        poll_s = self.system.settings.worker_poll_interval_s
        while not stop.is_set():
            self._work_announced.wait(min(poll_s, 1.0))
            self._work_announced.clear()
            if stop.is_set():
                return
            try:
                self.dispatch_due()
            except Exception:  # noqa: BLE001 - it must outlive one bad pass; logged with its traceback
                log.exception("dispatch_pass_failed")
                stop.wait(1.0)

    def handle_uplinks_until(self, stop: threading.Event) -> None:
        """A helper thread taking uplinks from the same queue (the work is mostly waiting on the database)."""
        while not stop.is_set():
            try:
                self.handle_uplinks(wait_s=min(self.system.settings.worker_poll_interval_s, 1.0))
            except Exception:  # noqa: BLE001 - it must outlive one bad frame's pass; logged with its traceback
                log.exception("uplink_pass_failed")
                stop.wait(1.0)

    def run(self, stop: threading.Event) -> None:
        self.transport.start()
        self.listen_for_work(stop)
        ChannelJobs(self.system).start(stop)  # order recovery, refunds, statements: entrypoints/workers/channel_jobs.py
        # On PostgreSQL due meters get a thread of their own, so a new purchase never waits behind a
        # batch of acknowledgements, and uplinks `worker_uplink_threads`; SQLite has one writer,
        # and there one thread does both, in turn.
        dispatcher = None
        helpers: list[threading.Thread] = []
        if self.system.engine.url.get_backend_name() == "postgresql":
            dispatcher = threading.Thread(target=self.dispatch_until, args=(stop,), name="gasworks-dispatch", daemon=True)
            dispatcher.start()
            for k in range(1, self.system.settings.worker_uplink_threads):
                helpers.append(threading.Thread(target=self.handle_uplinks_until, args=(stop,), name=f"gasworks-uplinks-{k}", daemon=True))
                helpers[-1].start()
        log.info("worker_started", transport=type(self.transport).__name__)
        try:
            while not stop.is_set():
                try:
                    self.run_once(wait_s=self.system.settings.worker_poll_interval_s, due_meters=dispatcher is None)
                except Exception:  # noqa: BLE001 - a worker must outlive one bad pass; it is logged with its traceback
                    log.exception("worker_pass_failed")
                    stop.wait(1.0)
        finally:
            self._work_announced.set()
            for thread in [*helpers, *([dispatcher] if dispatcher is not None else [])]:
                thread.join(10)
            self.transport.stop()
            log.info("worker_stopped")
