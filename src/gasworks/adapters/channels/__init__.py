"""One codec per payment channel kind: verify the wire format, return a PaymentNotice, format replies."""

from gasworks.adapters.channels import alipay, wallet_hmac, wechatpay_v3
from gasworks.adapters.channels.base import InboundRequest, Reply
from gasworks.domain.channels import ChannelKind
from gasworks.services.notifications import Decoder

# POST /v1/channels/{id}/notify: merchant-order notifications.
NOTIFY_DECODERS: dict[ChannelKind, Decoder] = {
    ChannelKind.WECHATPAY_V3: wechatpay_v3.decode_notification,
    ChannelKind.ALIPAY: alipay.decode_notification,
}
# POST /v1/channels/{id}/payments: bill payment.
BILL_PAYMENT_DECODERS: dict[ChannelKind, Decoder] = {
    ChannelKind.WALLET_HMAC: wallet_hmac.decode_payment,
}

__all__ = ["BILL_PAYMENT_DECODERS", "NOTIFY_DECODERS", "Decoder", "InboundRequest", "Reply"]
