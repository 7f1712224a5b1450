"""The frame side of taking meter reports a batch at a time (services/bulk_uplinks.py: ReportOpener).

Splitting and MAC checking are the same as `frame_security.open_uplink` does for one frame; what
differs is only that the keys and counters were read for the whole batch beforehand.
"""

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.frame_security import mac_is_valid
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.meter_messages import MeterMessage
from gasworks.domain.meter_security import MacScheme


class SealedFrames:
    """Splits a sealed uplink, checks its MAC and reads its message; nothing here touches the database."""

    def split(self, payload: bytes) -> cjt188.SealedFrame | None:
        """A sealed frame from a meter (a reply), or None for anything else: that frame goes the one-by-one way."""
        try:
            sealed = cjt188.decode_sealed(payload)
        except MalformedFrame:
            return None
        return sealed if sealed.frame.control & cjt188.REPLY else None

    def mac_is_valid(self, sealed: cjt188.SealedFrame, *, scheme: MacScheme, key: bytes) -> bool:
        return mac_is_valid(scheme, key, sealed.signed, sealed.mac)

    def message(self, sealed: cjt188.SealedFrame) -> MeterMessage | None:
        """What it says, or None if the content does not read (the one-by-one way refuses and records it)."""
        try:
            return cjt188.message_of(sealed.frame)
        except MalformedFrame:
            return None
