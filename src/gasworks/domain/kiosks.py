"""Kiosks and counters where card meters' purchases are written: whether one takes cards now."""

from enum import StrEnum


class KioskStatus(StrEnum):
    WORKING = "working"
    OUT_OF_ORDER = "out_of_order"
    CLOSED = "closed"
