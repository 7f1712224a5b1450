"""Alipay asynchronous notifications (异步通知), RSA2 style.

Wire format, as Alipay documents it: an ``application/x-www-form-urlencoded`` POST with
``notify_time`` (yyyy-MM-dd HH:mm:ss, Beijing time, the time this attempt was sent), ``notify_type``,
``notify_id`` (the same on every retry), ``app_id``, ``charset``, ``sign_type=RSA2``, ``sign``,
``trade_no`` (Alipay's transaction id), ``out_trade_no``, ``trade_status``, ``total_amount``
(yuan, 2 decimals), ``gmt_payment``. The signature is SHA256withRSA, base64, over the parameters
other than ``sign`` and ``sign_type``, sorted by name, joined as ``k=v`` with ``&``, values
URL-decoded, empty values left out, as the bytes of the declared ``charset`` (utf-8, gbk, gb2312):
Alipay percent-encodes and signs in it, so both decoding and verifying use it. Reply ``success`` (plain text) to stop the retries (up to 8
times in 25 h); anything else, by convention ``failure``, makes Alipay retry.

Alipay notifications carry no nonce; the send time is signed, so a stale copy is refused, and a
fresh retry of a booked trade returns the first answer through the exactly-once key.
"""

import urllib.parse
from datetime import datetime

from gasworks.adapters.channels.base import BEIJING, InboundRequest, Reply, check_timestamp, require
from gasworks.adapters.channels.rsa import sign_sha256_rsa, verify_sha256_rsa
from gasworks.domain.channels import Channel, KeyPurpose, PaymentNotice, RefundNotice
from gasworks.domain.errors import GasworksError, IntakeRefused, InvalidInput
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, fen_to_yuan_text, yuan_text_to_fen

PAID_STATUSES = {"TRADE_SUCCESS", "TRADE_FINISHED"}
PARAMETERS_MAX = 100


# The charsets Alipay declares (the `charset` parameter) and the codec that reads them. Alipay signs
# the bytes of the declared charset and percent-encodes in it, so both decoding and verifying use it.
# GB2312 is read as GB18030, its superset: what GB2312 encodes, GB18030 encodes to the same bytes.
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gb18030", "gb18030": "gb18030"}


def signing_content(params: dict[str, str], charset: str = "utf-8") -> bytes:
    """The signed bytes: parameters but sign/sign_type, sorted, `k=v` joined by `&`, empty values
    left out, encoded in the declared charset (Alipay's own SDKs: `content.encode(charset)`)."""
    pairs = sorted((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != "")
    return "&".join(f"{k}={v}" for k, v in pairs).encode(codec_of(charset))


def codec_of(charset: str) -> str:
    codec = CHARSETS.get(charset.strip().lower())
    if codec is None:
        raise IntakeRefused(f"charset {charset[:20]!r} is not one of {', '.join(CHARSETS)}", code="MALFORMED")
    return codec


def parse_form(body: bytes) -> tuple[dict[str, str], str]:
    """The form's parameters, percent-decoded in its declared charset, and that charset."""
    try:
        raw = body.decode("ascii")
    except UnicodeDecodeError:
        raise IntakeRefused("form body must be URL-encoded ASCII", code="MALFORMED") from None
    try:  # latin-1 reads any bytes: only to find the declared charset, itself ASCII
        declared = urllib.parse.parse_qs(raw, encoding="latin-1", max_num_fields=PARAMETERS_MAX).get("charset", ["utf-8"])
    except ValueError as error:
        raise IntakeRefused(f"form body does not parse: {str(error)[:100]}", code="MALFORMED") from None
    if len(declared) != 1:
        raise IntakeRefused("parameter 'charset' appears twice", code="MALFORMED")
    charset = declared[0]
    try:
        pairs = urllib.parse.parse_qsl(
            raw,
            keep_blank_values=True,
            strict_parsing=True,
            encoding=codec_of(charset),
            errors="strict",
            max_num_fields=PARAMETERS_MAX,
        )
    except (ValueError, UnicodeDecodeError) as error:
        raise IntakeRefused(f"form body does not parse as {charset[:20]}: {str(error)[:100]}", code="MALFORMED") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise IntakeRefused(f"parameter {key[:40]!r} appears twice", code="MALFORMED")
        params[key] = value
    return params, charset


def _beijing_time(text: str, name: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError:
        raise IntakeRefused(f"{name} {text[:30]!r} is not yyyy-MM-dd HH:mm:ss", code="MALFORMED") from None


def decode_notification(channel: Channel, request: InboundRequest, now: datetime, skew_s: int) -> PaymentNotice | RefundNotice:
    params, charset = parse_form(request.body)
    signature = require(params.get("sign", ""), "sign parameter")
    if params.get("sign_type") != "RSA2":
        raise IntakeRefused(f"sign_type {params.get('sign_type', '')[:10]!r} is not RSA2", code="SIGNATURE_INVALID")
    content = signing_content(params, charset)
    keys = channel.active_keys(KeyPurpose.VERIFY_PUBLIC_KEY)  # two during a key rollover
    if not any(verify_sha256_rsa(k.material, content, signature) for k in keys):
        raise IntakeRefused("signature does not verify with any active Alipay public key", code="SIGNATURE_INVALID")
    check_timestamp(_beijing_time(require(params.get("notify_time", ""), "notify_time"), "notify_time"), now, skew_s)
    if channel.merchant_id and params.get("app_id") != channel.merchant_id:
        raise IntakeRefused(f"app_id {params.get('app_id', '')[:32]!r} is not this channel's app", code="MERCHANT_MISMATCH")
    if params.get("refund_fee"):  # a refund: Alipay notifies refund_fee (all refunded so far), gmt_refund, out_biz_no
        return _refund_notice(channel, params)
    if params.get("trade_status") not in PAID_STATUSES:
        raise IntakeRefused(
            f"trade_status {params.get('trade_status', '')[:20]!r}; acknowledged, nothing booked",
            code="EVENT_IGNORED",
            acknowledge=True,
        )
    try:
        amount_fen = yuan_text_to_fen(params.get("total_amount", ""))
    except InvalidInput as error:
        raise IntakeRefused(f"total_amount: {error.message}", code="MALFORMED") from None
    if amount_fen <= 0:
        raise IntakeRefused("total_amount must be positive", code="MALFORMED")
    if amount_fen > PAYMENT_FEN_ABSOLUTE_MAX:
        raise IntakeRefused(f"total_amount {amount_fen} fen is beyond any real payment", code="AMOUNT_OUT_OF_RANGE")
    trade_no = params.get("trade_no", "")
    out_trade_no = params.get("out_trade_no", "")
    if not 0 < len(trade_no) <= 64 or not 0 < len(out_trade_no) <= 64:
        raise IntakeRefused("trade_no and out_trade_no are required (at most 64 characters)", code="MALFORMED")
    gmt_payment = params.get("gmt_payment")
    return PaymentNotice(
        channel_id=channel.id,
        channel_txn_id=trade_no,
        amount_fen=amount_fen,
        paid_at=_beijing_time(gmt_payment, "gmt_payment") if gmt_payment else None,
        out_trade_no=out_trade_no,
        method="alipay",
    )


def _refund_notice(channel: Channel, params: dict[str, str]) -> RefundNotice:
    try:
        refund_fen = yuan_text_to_fen(params["refund_fee"])
    except InvalidInput as error:
        raise IntakeRefused(f"refund_fee: {error.message}", code="MALFORMED") from None
    if not 0 < refund_fen <= PAYMENT_FEN_ABSOLUTE_MAX:
        raise IntakeRefused(f"refund_fee {refund_fen} fen is not a real refund", code="MALFORMED")
    trade_no = params.get("trade_no", "")
    refund_id = params.get("out_biz_no") or params.get("notify_id", "")
    if not 0 < len(trade_no) <= 64 or not 0 < len(refund_id) <= 64:
        raise IntakeRefused("trade_no and out_biz_no (or notify_id) are required (at most 64 characters)", code="MALFORMED")
    gmt_refund = params.get("gmt_refund")
    refunded_at = _beijing_time(gmt_refund[:19], "gmt_refund") if gmt_refund else None  # Alipay may add milliseconds
    return RefundNotice(channel_id=channel.id, channel_txn_id=trade_no, refund_id=refund_id, refund_fen=refund_fen, refunded_at=refunded_at)


def success_reply() -> Reply:
    return Reply(200, b"success", "text/plain")


def error_reply(error: GasworksError) -> Reply:
    # Alipay reads only the body; the reason goes in a header for whoever watches the wire.
    return Reply(200, b"failure", "text/plain", {"X-Gasworks-Error": error.code})


class AlipayNotifier:
    """Alipay's side: builds signed notifications. For tests and the simulator."""

    def __init__(self, *, alipay_private_key_pem: str, app_id: str) -> None:
        self.alipay_private_key_pem = alipay_private_key_pem
        self.app_id = app_id

    def notification(
        self,
        *,
        out_trade_no: str,
        trade_no: str,
        amount_fen: int,
        at: datetime,
        trade_status: str = "TRADE_SUCCESS",
        extra: dict[str, str] | None = None,
        paid_at: datetime | None = None,  # when the resident paid, if earlier than this (re)send
        charset: str = "utf-8",  # utf-8, gbk or gb2312: signed and percent-encoded in it, as Alipay does
    ) -> tuple[dict[str, str], bytes]:
        at_beijing = at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        paid_beijing = (paid_at or at).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        params = {
            "notify_time": at_beijing,
            "notify_type": "trade_status_sync",
            "notify_id": f"ntf{trade_no}",
            "app_id": self.app_id,
            "charset": charset,
            "version": "1.0",
            "trade_no": trade_no,
            "out_trade_no": out_trade_no,
            "trade_status": trade_status,
            "total_amount": fen_to_yuan_text(amount_fen),
            "receipt_amount": fen_to_yuan_text(amount_fen),
            "gmt_payment": paid_beijing,
            "subject": "燃气费充值",
            **(extra or {}),
        }
        params["sign"] = sign_sha256_rsa(self.alipay_private_key_pem, signing_content(params, params["charset"]))
        params["sign_type"] = "RSA2"
        body = urllib.parse.urlencode(params, encoding=codec_of(params["charset"])).encode("ascii")
        return {"Content-Type": f"application/x-www-form-urlencoded; charset={params['charset']}"}, body
