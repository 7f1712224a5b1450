"""What an operator may decide about a payment held in suspense."""

from enum import StrEnum


class HoldDecision(StrEnum):
    CREDIT = "credit"  # the money belongs to this account: book it there
    REFUND = "refund"  # give it back to the resident through the channel
