"""A worker that takes waiting uplinks a batch per transaction (services/bulk_uplinks.py), then does
what every worker does (due meters, watchdog). For a fleet whose daily reports arrive in waves."""

from concurrent.futures import ThreadPoolExecutor

import structlog

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.batch_frames import SealedFrames
from gasworks.adapters.meters.transport import TransportError
from gasworks.bootstrap import System
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.frames import UplinkFrame
from gasworks.entrypoints.workers.worker import Transport, Worker
from gasworks.observability import uplinks_waiting
from gasworks.services.bulk_uplinks import UPLINKS_PER_TRANSACTION_MAX, handle_uplinks
from gasworks.services.delivery import dispatch_meter, refuse_unreadable_frame

log = structlog.get_logger(__name__)


class BatchWorker(Worker):
    """`concurrency`: meters served at once outside the batch (acknowledgements, sends); each meter's frames stay in order."""

    def __init__(self, system: System, transport: Transport, *, concurrency: int = 8) -> None:
        super().__init__(system, transport)
        self.frames = SealedFrames()
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="batch-worker") if concurrency > 1 else None
        self.taken_in_batches = 0
        self.taken_one_by_one = 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def drain_uplinks(self, *, batch_max: int = UPLINKS_PER_TRANSACTION_MAX) -> int:
        """Every uplink waiting now, `batch_max` per transaction; each meter with work waiting is served while it listens."""
        done = 0
        while True:
            items: list[tuple[str, UplinkFrame]] = []  # read here, at the edge: the service takes frames, never bytes
            unreadable: list[tuple[str, bytes, MalformedFrame]] = []
            while len(items) + len(unreadable) < batch_max and (item := self.transport.uplinks.get(0)) is not None:
                if not item[0]:  # an empty serial is a nudge, not a frame
                    continue
                try:
                    items.append((item[0], cjt188.read_uplink(item[1])))
                except MalformedFrame as error:
                    unreadable.append((item[0], item[1], error))
            if not items and not unreadable:
                break
            batch = handle_uplinks(items, self.system.new_uow, self.frames, pool=self.pool)
            for serial, payload, error in unreadable:  # refused and recorded one by one, as the one-by-one path does
                refuse_unreadable_frame(serial, error.code, error.message, payload, self.system.new_uow())
            self.taken_in_batches += batch.in_batch
            self.taken_one_by_one += batch.one_by_one + len(unreadable)
            done += len(items) + len(unreadable)
            waiting = list(dict.fromkeys(o.serial for o in batch.outcomes if o.commands_waiting))
            done += sum((self.pool.map if self.pool is not None else map)(self._send_next, waiting))
        uplinks_waiting.set(self.transport.uplinks.pending())
        return done

    def _send_next(self, serial: str) -> int:
        try:
            return 1 if dispatch_meter(serial, self.system.new_uow(), self.transport) is not None else 0
        except TransportError as error:
            log.warning("meter_send_failed", meter=serial, reason=str(error))
            return 0

    def run_once(self, *, wait_s: float = 0.0, due_meters: bool = True) -> int:
        done = self.drain_uplinks()
        return done + super().run_once(wait_s=0.0 if done else wait_s, due_meters=due_meters)
