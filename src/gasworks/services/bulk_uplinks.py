"""Many meter reports in one unit of work: a city's daily reports at the rate they arrive.

`handle_uplink` takes one frame per transaction: right for acknowledgements and for anything
unusual, too slow for a million daily reports. Here a batch of frames (read at the worker's edge:
an UplinkFrame each, never bytes; one that cannot be read never gets here) is sorted, the meters, their
frame security and their keys are read and locked once for the batch, and every frame that is a
plain daily report (sealed under the active key, MAC valid, counter above the last one, a meter with
no command open or stopped) is taken by the very same rules (`delivery.apply_message`), the changed
meters written back together. Every other frame (an acknowledgement, a refusal, a bad MAC, a replay,
a rotation in progress, a meter with commands, a second frame of one meter in the batch) goes
through `handle_uplink` one at a time afterwards, so what is refused, recorded and alerted is
exactly what the one-by-one path does.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import OPEN_STATES, STOPPED_STATES, CommandState, MeterCommand, MeterLink
from gasworks.domain.frames import SealedEnvelope, UplinkFrame
from gasworks.domain.meter_messages import CurrentData, MeterMessage
from gasworks.domain.meter_security import MacScheme, MeterFrameSecurity
from gasworks.services.delivery import UplinkOutcome, apply_message, count_frame_refusal, handle_uplink, record_frame_refusal
from gasworks.services.unit_of_work import UnitOfWork

UPLINKS_PER_TRANSACTION_MAX = 2_000  # one transaction's lock set and statement size; a bound, not a target


class FrameOpener(Protocol):
    """What the batch needs of the codec, for a sealed reply read at the edge (`frame.sealed` is set)."""

    def mac_is_valid(self, frame: UplinkFrame, *, scheme: MacScheme, key: bytes) -> bool: ...
    def message(self, frame: UplinkFrame) -> MeterMessage | None: ...


class MeterReportStore(Protocol):
    def lock(self, serials: Sequence[str]) -> tuple[dict[str, MeterLink], dict[str, MeterFrameSecurity]]: ...
    def keys(self, wanted: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]: ...
    def with_commands(self, serials: Sequence[str], states: frozenset[CommandState], route: str) -> set[str]: ...
    def save(self, links: Sequence[MeterLink], securities: Sequence[MeterFrameSecurity]) -> None: ...


class BulkUplinksUnitOfWork(UnitOfWork, Protocol):
    bulk_meter_reports: MeterReportStore


@dataclass(frozen=True)
class BatchOutcome:
    outcomes: list[UplinkOutcome]
    in_batch: int  # taken in the batch transaction
    one_by_one: int  # sent through handle_uplink


def handle_uplinks(
    items: Sequence[tuple[str, UplinkFrame]], new_uow: Callable[[], BulkUplinksUnitOfWork], opener: FrameOpener, *, pool: Executor | None = None,
) -> BatchOutcome:  # fmt: skip
    """(topic serial, frame read at the edge) in arrival order; one outcome per frame, in the same order.
    With `pool`, the frames left for the one-by-one path are taken concurrently, one meter's in order."""
    if len(items) > UPLINKS_PER_TRANSACTION_MAX:
        raise ValueError(f"at most {UPLINKS_PER_TRANSACTION_MAX} uplinks per batch, got {len(items)}")
    split: dict[int, tuple[SealedEnvelope, MeterMessage]] = {}
    seen: set[str] = set()
    for i, (topic_serial, frame) in enumerate(items):
        sealed = frame.sealed if frame.is_reply else None  # a sealed frame from a meter; anything else goes the one-by-one way
        message = opener.message(frame) if sealed is not None else None
        if sealed is None or not isinstance(message, CurrentData) or message.serial != topic_serial or topic_serial in seen:
            continue
        seen.add(topic_serial)
        split[i] = (sealed, message)
    outcomes: dict[int, UplinkOutcome] = {}
    refusals: list[tuple[str, str, str]] = []
    if split:
        with (uow := new_uow()):
            now = uow.clock.now()
            serials = [items[i][0] for i in split]
            store = uow.bulk_meter_reports
            links, securities = store.lock(serials)
            busy = store.with_commands(serials, OPEN_STATES | STOPPED_STATES, MeterKind.IOT.value)
            keys = store.keys([(items[i][0], sealed.key_version) for i, (sealed, _) in split.items()])
            changed_links: list[MeterLink] = []
            changed_securities: list[MeterFrameSecurity] = []
            for i, (sealed, message) in split.items():
                serial, frame = items[i]
                link, security, key = links.get(serial), securities.get(serial), keys.get((serial, sealed.key_version))
                if (
                    link is None or link.kind != MeterKind.IOT or security is None or serial in busy or key is None
                    or not security.profile.seals_frames or security.pending_key_version is not None
                    or sealed.key_version != security.active_key_version or sealed.counter <= security.uplink_counter_seen
                    or not opener.mac_is_valid(frame, scheme=security.profile.mac_scheme, key=key)
                ):  # fmt: skip
                    continue  # not a plain report: the one-by-one path decides, and records any refusal
                security.take_uplink(key_version=sealed.key_version, counter=sealed.counter, at=now)
                changed_securities.append(security)
                commands: list[MeterCommand] = []
                taken = apply_message(message, link, commands, uow, uow.delivery, now, counter=sealed.counter)
                if taken.refusal is not None:
                    record_frame_refusal(uow, serial, *taken.refusal, frame.raw)
                    refusals.append((serial, *taken.refusal))
                for command in commands:  # a valve command the report called for
                    if command.events:
                        uow.meter_commands.save(command, now)
                changed_links.append(link)
                if taken.refusal is not None:
                    outcomes[i] = UplinkOutcome(serial, False, f"{taken.refusal[0]}: {taken.refusal[1]}")
                else:
                    outcomes[i] = UplinkOutcome(serial, True, taken.what, commands_waiting=any(c.state in OPEN_STATES for c in commands))
            store.save(changed_links, changed_securities)
            uow.commit()
        for refusal in refusals:
            count_frame_refusal(*refusal)
    in_batch = len(outcomes)
    by_meter: dict[str, list[int]] = {}
    for i, (topic_serial, _) in enumerate(items):
        if i not in outcomes:
            by_meter.setdefault(topic_serial, []).append(i)

    def one_meter(indices: list[int]) -> list[tuple[int, UplinkOutcome]]:
        return [(i, handle_uplink(items[i][0], items[i][1], new_uow())) for i in indices]

    for one_by_one in (pool.map if pool is not None else map)(one_meter, by_meter.values()):
        outcomes.update(one_by_one)
    return BatchOutcome([outcomes[i] for i in range(len(items))], in_batch, len(items) - in_batch)
