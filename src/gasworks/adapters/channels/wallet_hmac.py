"""Bill payment (代收/销账) for carrier wallets and banks, signed with HMAC-SHA256.

The channel first looks the account up (``GET .../accounts/{account_no}``), shows the resident
the masked name and balance, collects, then posts the payment (``POST .../payments``) with its own
transaction id. Every request carries:

- ``X-Gasworks-Key-Id``: which shared secret signed (two are valid during a rollover);
- ``X-Gasworks-Timestamp``: unix seconds, within the tolerance of our clock (default 5 min);
- ``X-Gasworks-Nonce``: 8 to 64 characters, never reused on this channel;
- ``X-Gasworks-Signature``: base64 HMAC-SHA256 over the canonical string
  ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nhex(SHA256(body))\\n``.

Payment body: ``{"txn_id": str, "account_no": str, "amount_fen": int, "paid_at": RFC 3339?}``.
"""

import base64
import hashlib
import hmac
import json
import secrets
from datetime import datetime

from gasworks.adapters.channels.base import InboundRequest, check_timestamp, require, unix_seconds
from gasworks.domain.channels import Channel, KeyPurpose, PaymentNotice
from gasworks.domain.errors import IntakeRefused
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX

TXN_ID_CHARS_MAX = 64


def canonical_string(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    body_sha256 = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{body_sha256}\n".encode()


def signature(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_request(channel: Channel, request: InboundRequest, now: datetime, skew_s: int) -> str:
    """Checks key, signature and timestamp; returns the nonce, which the caller claims once.
    Any failure here means the caller is not authenticated: 401 with the reason's code."""
    try:
        return _verify(channel, request, now, skew_s)
    except IntakeRefused as error:
        raise IntakeRefused(error.message, code=error.code, http_status=401) from None


def _verify(channel: Channel, request: InboundRequest, now: datetime, skew_s: int) -> str:
    key_id = require(request.header("X-Gasworks-Key-Id"), "X-Gasworks-Key-Id header")
    given = require(request.header("X-Gasworks-Signature"), "X-Gasworks-Signature header")
    timestamp = require(request.header("X-Gasworks-Timestamp"), "X-Gasworks-Timestamp header")
    nonce = require(request.header("X-Gasworks-Nonce"), "X-Gasworks-Nonce header")
    key = next((k for k in channel.active_keys(KeyPurpose.HMAC_SECRET) if k.key_id == key_id), None)
    if key is None:
        raise IntakeRefused(f"no active key {key_id[:64]!r} on this channel", code="UNKNOWN_KEY")
    expected = signature(key.material, canonical_string(request.method, request.path, timestamp, nonce, request.body))
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise IntakeRefused("signature does not verify", code="SIGNATURE_INVALID")
    check_timestamp(unix_seconds(timestamp), now, skew_s)
    if not 8 <= len(nonce) <= 64:
        raise IntakeRefused("nonce must be 8 to 64 characters", code="MALFORMED")
    return nonce


def decode_payment(channel: Channel, request: InboundRequest, now: datetime, skew_s: int) -> PaymentNotice:
    nonce = verify_request(channel, request, now, skew_s)
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise IntakeRefused("body is not JSON", code="MALFORMED") from None
    if not isinstance(body, dict):
        raise IntakeRefused("body is not a JSON object", code="MALFORMED")
    txn_id, account_no, amount_fen = body.get("txn_id"), body.get("account_no"), body.get("amount_fen")
    if not isinstance(txn_id, str) or not 0 < len(txn_id) <= TXN_ID_CHARS_MAX:
        raise IntakeRefused(f"txn_id must be text of 1 to {TXN_ID_CHARS_MAX} characters", code="MALFORMED")
    if not isinstance(account_no, str) or not 0 < len(account_no) <= 12:
        raise IntakeRefused("account_no must be text of 1 to 12 characters", code="MALFORMED")
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise IntakeRefused("amount_fen must be a positive integer", code="MALFORMED")
    if amount_fen > PAYMENT_FEN_ABSOLUTE_MAX:  # e.g. 2**63: never reaches the database
        raise IntakeRefused(f"amount_fen {str(amount_fen)[:30]} is above any payment ceiling", code="AMOUNT_ABOVE_LIMIT", http_status=422)
    paid_at = None
    if body.get("paid_at") is not None:
        try:
            paid_at = datetime.fromisoformat(str(body["paid_at"]))
        except ValueError:
            raise IntakeRefused("paid_at is not RFC 3339", code="MALFORMED") from None
        if paid_at.tzinfo is None:
            raise IntakeRefused("paid_at needs a UTC offset", code="MALFORMED")
    return PaymentNotice(
        channel_id=channel.id,
        channel_txn_id=txn_id,
        amount_fen=amount_fen,
        paid_at=paid_at,
        account_no=account_no,
        method="wallet",
        replay_nonce=nonce,
    )


class WalletClient:
    """The wallet's side: signs requests. For tests and the simulator."""

    def __init__(self, *, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret

    def signed_headers(self, method: str, path: str, body: bytes, at: datetime, nonce: str | None = None) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        nonce = nonce or secrets.token_hex(16)
        return {
            "Content-Type": "application/json",
            "X-Gasworks-Key-Id": self.key_id,
            "X-Gasworks-Timestamp": timestamp,
            "X-Gasworks-Nonce": nonce,
            "X-Gasworks-Signature": signature(self.secret, canonical_string(method, path, timestamp, nonce, body)),
        }

    def payment(self, *, path: str, txn_id: str, account_no: str, amount_fen: int, at: datetime, nonce: str | None = None, paid_at: datetime | None = None) -> tuple[dict[str, str], bytes]:
        body = json.dumps({"txn_id": txn_id, "account_no": account_no, "amount_fen": amount_fen, "paid_at": (paid_at or at).isoformat()}).encode()
        return self.signed_headers("POST", path, body, at, nonce), body
