"""Payment channels and what a verified channel message says, whatever its wire format."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ChannelKind(StrEnum):
    WECHATPAY_V3 = "wechatpay-v3"  # merchant orders, RSA-SHA256 signed, AES-256-GCM resource
    ALIPAY = "alipay"  # merchant orders, RSA2 over sorted parameters
    WALLET_HMAC = "wallet-hmac"  # bill payment (代收/销账) by carrier wallets and banks
    KIOSK = "kiosk"  # self-service machines, authenticated by device key
    COUNTER = "counter"  # service-hall counters, authenticated by device key

    @property
    def uses_merchant_orders(self) -> bool:
        return self in (ChannelKind.WECHATPAY_V3, ChannelKind.ALIPAY)

    @property
    def uses_devices(self) -> bool:
        return self in (ChannelKind.KIOSK, ChannelKind.COUNTER)


class KeyPurpose(StrEnum):
    VERIFY_PUBLIC_KEY = "verify"  # the channel's RSA public key (PEM) we verify signatures with
    HMAC_SECRET = "hmac"  # shared secret for wallet-hmac
    APIV3_KEY = "apiv3"  # WeChat Pay APIv3 key: decrypts the AES-256-GCM resource
    SIGNING_KEY = "sign"  # our own RSA private key (PEM) signing calls to the channel; key id = our certificate serial


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class ChannelKey:
    channel_id: str
    key_id: str  # WeChat: the platform certificate/public key serial; wallet: its key id
    purpose: KeyPurpose
    material: str
    status: KeyStatus
    added_at: datetime | None = None


@dataclass(frozen=True)
class Channel:
    id: str
    kind: ChannelKind
    name: str
    merchant_id: str = ""  # WeChat mchid / Alipay app_id we expect in notifications
    keys: tuple[ChannelKey, ...] = ()
    fee_ppm: int = 0  # the channel's fee per payment, parts per million (0.6 % = 6000)

    def fee_fen(self, amount_fen: int) -> int:
        """The fee agreed with the channel for one payment, rounded half up to the fen."""
        return (amount_fen * self.fee_ppm + 500_000) // 1_000_000

    def active_keys(self, purpose: KeyPurpose) -> list[ChannelKey]:
        return [k for k in self.keys if k.purpose == purpose and k.status == KeyStatus.ACTIVE]


@dataclass(frozen=True)
class PaymentNotice:
    """A channel's verified statement that money was collected: the input to booking.

    Exactly one of `out_trade_no` (merchant order channels) and `account_no` (bill payment,
    kiosks, counters) names what the money is for.
    """

    channel_id: str
    channel_txn_id: str
    amount_fen: int
    paid_at: datetime | None
    out_trade_no: str | None = None
    account_no: str | None = None
    method: str = ""  # cash, card, qr ... for kiosks and counters
    replay_nonce: str | None = None  # checked once per channel when the wire format carries one


@dataclass(frozen=True)
class RefundNotice:
    """A channel's verified statement that it paid a payment's money back to the resident: the
    confirmation of a refund we requested, or a refund it made on its own."""

    channel_id: str
    channel_txn_id: str  # the payment's transaction at the channel
    refund_id: str  # the channel's own id for the refund
    refund_fen: int
    refunded_at: datetime | None
    replay_nonce: str | None = None
    not_paid_because: str | None = None  # the channel closed the refund or could not pay it back (WeChat REFUND.CLOSED / ABNORMAL)


@dataclass(frozen=True)
class InboundRequest:
    """A channel's HTTP request exactly as received: signatures cover the raw bytes."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    remote_addr: str = ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def summary(self, body_chars_max: int = 2000) -> dict[str, object]:
        """What a rejection record keeps: enough to investigate, bounded in size."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": {k: v[:200] for k, v in self.headers.items() if k.startswith(("wechatpay", "x-gasworks", "content-type"))},
            "body": self.body[:body_chars_max].decode("utf-8", errors="replace"),
            "body_bytes": len(self.body),
        }
