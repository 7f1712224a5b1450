"""A frame from a meter as read at the worker's edge: what its structure says, before any key is used.

The codec (`adapters/meters/cjt188.py: read_uplink`) checks structure and checksum and splits the
frame; nothing here is verified. Which meter it names and whether it is a reply are read without a
key; its MAC, key version and counter are checked, and its message read by the meter model's
profile, behind the unit of work's `frames` port (`services/unit_of_work.py: MeterFrames`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SealedEnvelope:
    """The security trailer of a frame long enough to carry one (KV, CTR, MAC), and what it covers."""

    key_version: int  # KV: which of the meter's keys it claims to be sealed under
    counter: int  # CTR: this direction's frame counter
    signed: bytes  # the bytes the MAC covers: from 68 up to and including CTR3
    mac: bytes  # MAC0..MAC7
    body: bytes  # the data field without the trailer: DI0 DI1 SER payload


@dataclass(frozen=True)
class UplinkFrame:
    """One frame that arrived from a meter, read for its structure only (no key needed)."""

    serial: str  # the 14-digit meter address the frame names
    control: int  # C, as received (in a refusal's words)
    is_reply: bool  # the direction bit: set meter → gasworks, clear gasworks → meter
    data: bytes  # the whole data field, DI0 up to the end (a model without MAC reads its message here)
    sealed: SealedEnvelope | None  # None: too short for a security trailer (a sealed model refuses it)
    raw: bytes  # the frame as received, kept only so a refusal record can keep it
