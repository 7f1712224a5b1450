"""WeChat Pay API v3 payment notifications (支付结果通知).

Wire format, as WeChat Pay documents it:
- headers Wechatpay-Timestamp (unix s), Wechatpay-Nonce, Wechatpay-Signature (base64
  SHA256withRSA), Wechatpay-Serial (which platform key signed);
- signed message: ``timestamp + "\\n" + nonce + "\\n" + raw body + "\\n"``;
- body: ``{"id", "create_time", "event_type": "TRANSACTION.SUCCESS", "resource_type":
  "encrypt-resource", "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext" (base64,
  tag appended), "nonce", "associated_data", "original_type": "transaction"}}``;
- the resource decrypts with the 32-byte APIv3 key to the transaction: ``mchid, appid,
  out_trade_no, transaction_id, trade_state, success_time, amount {total (fen), currency}``;
- reply: HTTP 200 (a body is optional) to acknowledge; 4xx/5xx with ``{"code": "FAIL",
  "message": ...}`` makes WeChat Pay retry (15 s ... 6 h, about 24 h in all).
"""

import base64
import binascii
import json
import secrets
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gasworks.adapters.channels.base import InboundRequest, Reply, check_timestamp, require, unix_seconds
from gasworks.adapters.channels.rsa import sign_sha256_rsa, verify_sha256_rsa
from gasworks.domain.channels import Channel, KeyPurpose, PaymentNotice, RefundNotice
from gasworks.domain.errors import GasworksError, IntakeRefused
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX

SUCCESS_EVENT = "TRANSACTION.SUCCESS"
REFUND_EVENT = "REFUND.SUCCESS"  # refund notification (退款结果通知): resource original_type "refund"
REFUND_NOT_PAID_EVENTS = ("REFUND.ABNORMAL", "REFUND.CLOSED")  # the refund failed: an alert for the operator, no money moves


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def decode_notification(channel: Channel, request: InboundRequest, now: datetime, skew_s: int) -> PaymentNotice | RefundNotice:
    serial = require(request.header("Wechatpay-Serial"), "Wechatpay-Serial header")
    signature = require(request.header("Wechatpay-Signature"), "Wechatpay-Signature header")
    timestamp = require(request.header("Wechatpay-Timestamp"), "Wechatpay-Timestamp header")
    nonce = require(request.header("Wechatpay-Nonce"), "Wechatpay-Nonce header")
    key = next((k for k in channel.active_keys(KeyPurpose.VERIFY_PUBLIC_KEY) if k.key_id == serial), None)
    if key is None:
        raise IntakeRefused(f"no active platform key with serial {serial[:64]!r}", code="UNKNOWN_KEY")
    if not verify_sha256_rsa(key.material, signed_message(timestamp, nonce, request.body), signature):
        raise IntakeRefused("signature does not verify", code="SIGNATURE_INVALID")
    check_timestamp(unix_seconds(timestamp), now, skew_s)

    envelope = _json_object(request.body, "notification body")
    if envelope.get("event_type") == REFUND_EVENT or envelope.get("event_type") in REFUND_NOT_PAID_EVENTS:
        return _refund_notice(channel, _json_object(_decrypt_resource(channel, envelope.get("resource")), "decrypted resource"), nonce)
    if envelope.get("event_type") != SUCCESS_EVENT:
        raise IntakeRefused(
            f"event {str(envelope.get('event_type'))[:40]!r} is not a payment; acknowledged, nothing booked",
            code="EVENT_IGNORED",
            acknowledge=True,
        )
    transaction = _json_object(_decrypt_resource(channel, envelope.get("resource")), "decrypted resource")
    if channel.merchant_id and transaction.get("mchid") != channel.merchant_id:
        raise IntakeRefused(f"mchid {str(transaction.get('mchid'))[:32]!r} is not this channel's merchant", code="MERCHANT_MISMATCH")
    if transaction.get("trade_state") != "SUCCESS":
        raise IntakeRefused(
            f"trade_state {str(transaction.get('trade_state'))[:20]!r}; acknowledged, nothing booked",
            code="EVENT_IGNORED",
            acknowledge=True,
        )
    amount = transaction.get("amount")
    total = amount.get("total") if isinstance(amount, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        raise IntakeRefused(f"amount.total must be a positive integer of fen, got {str(total)[:30]!r}", code="MALFORMED")
    if total > PAYMENT_FEN_ABSOLUTE_MAX:
        raise IntakeRefused(f"amount.total {str(total)[:30]} fen is beyond any real payment", code="AMOUNT_OUT_OF_RANGE")
    if amount.get("currency", "CNY") != "CNY":
        raise IntakeRefused(f"currency {amount.get('currency')!r} is not CNY", code="MALFORMED")
    return PaymentNotice(
        channel_id=channel.id,
        channel_txn_id=_text(transaction, "transaction_id", 32),
        amount_fen=total,
        paid_at=_rfc3339(transaction.get("success_time")),
        out_trade_no=_text(transaction, "out_trade_no", 32),
        method=str(transaction.get("trade_type", ""))[:20],
        replay_nonce=nonce[:64],
    )


def _refund_notice(channel: Channel, refund: dict, nonce: str) -> RefundNotice:
    """The decrypted refund: mchid, out_trade_no, transaction_id, out_refund_no, refund_id,
    refund_status, success_time, amount {total, refund, payer_total, payer_refund} in fen."""
    if channel.merchant_id and refund.get("mchid") != channel.merchant_id:
        raise IntakeRefused(f"mchid {str(refund.get('mchid'))[:32]!r} is not this channel's merchant", code="MERCHANT_MISMATCH")
    status = refund.get("refund_status")
    if status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
        raise IntakeRefused(f"refund_status {str(status)[:20]!r}; acknowledged, nothing moved", code="EVENT_IGNORED", acknowledge=True)
    amount = refund.get("amount")
    refunded = amount.get("refund") if isinstance(amount, dict) else None
    if not isinstance(refunded, int) or isinstance(refunded, bool) or not 0 < refunded <= PAYMENT_FEN_ABSOLUTE_MAX:
        raise IntakeRefused(f"amount.refund must be a positive integer of fen, got {str(refunded)[:30]!r}", code="MALFORMED")
    return RefundNotice(
        channel_id=channel.id, channel_txn_id=_text(refund, "transaction_id", 32), refund_id=_text(refund, "refund_id", 64),
        refund_fen=refunded, refunded_at=_rfc3339(refund.get("success_time")), replay_nonce=nonce[:64],
        not_paid_because=None if status == "SUCCESS" else f"WeChat Pay refund {status}: {str(refund.get('user_received_account', ''))[:60]}",
    )  # fmt: skip


def _decrypt_resource(channel: Channel, resource: object) -> bytes:
    if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise IntakeRefused("resource is missing or not AEAD_AES_256_GCM", code="MALFORMED")
    try:
        ciphertext = base64.b64decode(str(resource.get("ciphertext", "")), validate=True)
    except (binascii.Error, ValueError):
        raise IntakeRefused("resource.ciphertext is not base64", code="MALFORMED") from None
    nonce = str(resource.get("nonce", "")).encode()
    associated_data = str(resource.get("associated_data", "")).encode()
    if not nonce:
        raise IntakeRefused("resource.nonce is missing", code="MALFORMED")
    for key in channel.active_keys(KeyPurpose.APIV3_KEY):  # two during a key rollover
        try:
            return AESGCM(key.material.encode()).decrypt(nonce, ciphertext, associated_data or None)
        except (InvalidTag, ValueError):
            continue
    raise IntakeRefused("resource does not decrypt with any active APIv3 key", code="DECRYPT_FAILED")


def _json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IntakeRefused(f"{what} is not JSON", code="MALFORMED") from None
    if not isinstance(value, dict):
        raise IntakeRefused(f"{what} is not a JSON object", code="MALFORMED")
    return value


def _text(obj: dict, name: str, length_max: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= length_max:
        raise IntakeRefused(f"{name} must be text of 1 to {length_max} characters", code="MALFORMED")
    return value


def _rfc3339(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise IntakeRefused(f"success_time {value[:40]!r} is not RFC 3339", code="MALFORMED") from None


def success_reply() -> Reply:
    return Reply(200, json.dumps({"code": "SUCCESS", "message": "成功"}).encode())


def error_reply(error: GasworksError) -> Reply:
    status = 500 if error.http_status >= 500 else 400
    return Reply(status, json.dumps({"code": "FAIL", "message": f"{error.code}: {error.message}"}).encode())


class WechatPayV3Notifier:
    """WeChat Pay's side: builds signed, encrypted notifications. For tests and the simulator."""

    def __init__(self, *, platform_private_key_pem: str, serial: str, apiv3_key: str, mchid: str) -> None:
        if len(apiv3_key.encode()) != 32:
            raise ValueError("the APIv3 key is 32 bytes")
        self.platform_private_key_pem = platform_private_key_pem
        self.serial = serial
        self.apiv3_key = apiv3_key
        self.mchid = mchid

    def notification(
        self,
        *,
        out_trade_no: str,
        transaction_id: str,
        amount_fen: int,
        at: datetime,
        trade_state: str = "SUCCESS",
        event_type: str = SUCCESS_EVENT,
        nonce: str | None = None,
        paid_at: datetime | None = None,  # when the resident paid, if earlier than this (re)send
    ) -> tuple[dict[str, str], bytes]:
        transaction = {
            "mchid": self.mchid,
            "appid": "wxgasworks0000001",
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id,
            "trade_type": "JSAPI",
            "trade_state": trade_state,
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "success_time": (paid_at or at).isoformat(timespec="seconds"),
            "payer": {"openid": "oGasworksResident"},
            "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY", "payer_currency": "CNY"},
        }
        return self._signed(event_type, "transaction", "支付成功", transaction, at=at, nonce=nonce)

    def refund_notification(self, *, out_trade_no: str, transaction_id: str, refund_fen: int, total_fen: int, at: datetime, refund_status: str = "SUCCESS", nonce: str | None = None) -> tuple[dict[str, str], bytes]:
        refund = {
            "mchid": self.mchid,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id,
            "out_refund_no": "R" + secrets.token_hex(8),
            "refund_id": "50000" + secrets.token_hex(10),
            "refund_status": refund_status,
            "success_time": at.isoformat(timespec="seconds") if refund_status == "SUCCESS" else None,
            "user_received_account": "支付用户零钱",
            "amount": {"total": total_fen, "refund": refund_fen, "payer_total": total_fen, "payer_refund": refund_fen},
        }
        event = REFUND_EVENT if refund_status == "SUCCESS" else f"REFUND.{refund_status}"
        return self._signed(event, "refund", "退款成功" if refund_status == "SUCCESS" else "退款异常", refund, at=at, nonce=nonce)

    def _signed(self, event_type: str, original_type: str, summary: str, resource: dict, *, at: datetime, nonce: str | None) -> tuple[dict[str, str], bytes]:
        resource_nonce = secrets.token_hex(6)
        ciphertext = AESGCM(self.apiv3_key.encode()).encrypt(resource_nonce.encode(), json.dumps(resource, ensure_ascii=False).encode(), original_type.encode())
        body = json.dumps(
            {
                "id": secrets.token_hex(16),
                "create_time": at.isoformat(timespec="seconds"),
                "resource_type": "encrypt-resource",
                "event_type": event_type,
                "summary": summary,
                "resource": {
                    "original_type": original_type,
                    "algorithm": "AEAD_AES_256_GCM",
                    "ciphertext": base64.b64encode(ciphertext).decode(),
                    "associated_data": original_type,
                    "nonce": resource_nonce,
                },
            },
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(at.timestamp()))
        nonce = nonce or secrets.token_hex(16)
        headers = {
            "Content-Type": "application/json",
            "Wechatpay-Serial": self.serial,
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": sign_sha256_rsa(self.platform_private_key_pem, signed_message(timestamp, nonce, body)),
        }
        return headers, body
