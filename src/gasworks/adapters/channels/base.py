"""What every channel codec shares: the raw request it verifies (`InboundRequest`, a domain value)
and the reply it formats."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from gasworks.domain.channels import InboundRequest as InboundRequest  # the codecs import it from here
from gasworks.domain.errors import IntakeRefused

BEIJING = timezone(timedelta(hours=8))  # the wall clock Chinese channels write their times in


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def check_timestamp(sent_at: datetime, now: datetime, skew_s: int) -> None:
    drift_s = abs((now - sent_at).total_seconds())
    if drift_s > skew_s:
        raise IntakeRefused(
            f"timestamp {sent_at.isoformat()} is {int(drift_s)} s from our clock (tolerance {skew_s} s)",
            code="TIMESTAMP_OUT_OF_TOLERANCE",
        )


def unix_seconds(text: str) -> datetime:
    if not text.isdigit() or len(text) > 12:
        raise IntakeRefused(f"timestamp must be unix seconds, got {text[:40]!r}", code="TIMESTAMP_INVALID")
    return datetime.fromtimestamp(int(text), UTC)


def require(value: str, what: str) -> str:
    if not value:
        raise IntakeRefused(f"{what} is missing", code="SIGNATURE_MISSING")
    return value
