"""Who may call gasworks: the roles an API key carries."""

from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"  # runs the utility: accounts, orders, holds
    AUDITOR = "auditor"  # reads everything, changes nothing
    DEVICE = "device"  # a kiosk or counter, acting for one channel
