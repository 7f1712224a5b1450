"""The frame side of taking meter reports a batch at a time (services/bulk_uplinks.py: FrameOpener).

Frames come read at the worker's edge (`cjt188.read_uplink`). MAC checking and reading the message
are the same as `frame_security.open_uplink` does for one frame; what differs is only that the keys
and counters were read for the whole batch beforehand.
"""

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.frame_security import mac_is_valid
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.frames import UplinkFrame
from gasworks.domain.meter_messages import MeterMessage
from gasworks.domain.meter_security import MacScheme


class SealedFrames:
    """Checks a sealed uplink's MAC and reads its message; nothing here touches the database."""

    def mac_is_valid(self, frame: UplinkFrame, *, scheme: MacScheme, key: bytes) -> bool:
        return frame.sealed is not None and mac_is_valid(scheme, key, frame.sealed.signed, frame.sealed.mac)

    def message(self, frame: UplinkFrame) -> MeterMessage | None:
        """What it says, or None if the content does not read (the one-by-one way refuses and records it)."""
        if frame.sealed is None:
            return None
        try:
            return cjt188.message_of(cjt188.Frame(frame.serial, frame.control, frame.sealed.body))
        except MalformedFrame:
            return None
