"""Expected failures, each with a stable machine-readable code.

Entrypoints map these once to the reply their caller expects (HTTP status + JSON, a channel's own
reply format, or a CLI message and exit code). Anything else is a bug and crashes loudly.
"""


class GasworksError(Exception):
    """An expected failure. `code` is stable and documented; `message` is for people."""

    code = "ERROR"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(GasworksError):
    code = "INVALID_INPUT"
    http_status = 422


class PayloadTooLarge(GasworksError):
    code = "BODY_TOO_LARGE"
    http_status = 413


class NotFound(GasworksError):
    code = "NOT_FOUND"
    http_status = 404


class Conflict(GasworksError):
    code = "CONFLICT"
    http_status = 409


class IntakeRefused(GasworksError):
    """A channel message we will not take: bad signature, stale, replayed, malformed.

    Every refusal is recorded (who, what, why) before the reply goes out.
    """

    code = "INTAKE_REFUSED"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, acknowledge: bool = False, http_status: int | None = None) -> None:
        super().__init__(message, code=code)
        # A verified message we deliberately ignore (a refund or a closed-trade event, say) is
        # acknowledged so the channel stops retrying; it is still recorded.
        self.acknowledge = acknowledge
        if http_status is not None:  # 401 when the caller could not be authenticated
            self.http_status = http_status


class Unauthorized(GasworksError):
    code = "UNAUTHORIZED"
    http_status = 401


class Forbidden(GasworksError):
    code = "FORBIDDEN"
    http_status = 403


class TooManyRequests(GasworksError):
    """A named bound on how often one caller or account may do something was hit."""

    code = "RATE_LIMITED"
    http_status = 429


class InvariantViolated(Exception):
    """A rule that must never break did. Stops the unit of work; never caught to carry on."""


class MalformedFrame(GasworksError):
    """A meter frame we cannot read: wrong start, checksum, length, type or content."""

    code = "MALFORMED_FRAME"
    http_status = 400


class DuplicateKey(Exception):
    """A natural key (channel transaction id, nonce) is already taken."""
